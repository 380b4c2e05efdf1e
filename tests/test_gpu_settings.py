"""The GPU settings a reset or rebind wipes: read with nvidia-smi, put back after each cycle and at the end."""

import json

from gpusoak import gpu_settings
from gpusoak.actions import Context
from gpusoak.journal import read as read_journal
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")
CTX = Context()
NODE = '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n{extra}\n[[gpu]]\nbdf = "0000:2a:00.0"\n'
OPERATOR = (["-c", "3"], ["-pl", "500"], ["-ac", "2619,1600"], ["-am", "1"], ["-pm", "1"])


def _node(tmp_path, extra=""):
    path = tmp_path / "s.toml"
    path.write_text(NODE.format(extra=extra))
    return open_sim_node(str(path))


def _smi(s, *args):
    r = s.node.runner.run(["nvidia-smi", "-i", GPU.nvml_bus_id, *args], timeout_s=5)
    assert r.ok, r.stderr


def test_real_csv_output_parses_and_na_values_are_not_values():
    out = "00000000:18:00.0, Exclusive_Process, 500.00, [N/A], [N/A], Enabled, [Not Supported]\n"
    got = gpu_settings.parse(GPU, out)
    assert (got.compute_mode, got.power_limit_w, got.accounting_mode) == ("Exclusive_Process", 500.0, True)
    assert got.app_clock_graphics_mhz is None and got.persistence_mode is None
    assert got.na == {"app_clock_graphics_mhz": "[N/A]", "app_clock_memory_mhz": "[N/A]",
                      "persistence_mode": "[Not Supported]"}
    assert gpu_settings.parse(GPU, "00000000:2a:00.0, Default, 700.00, 1980, 2619, Disabled, Enabled\n").error


def test_settings_a_reset_wipes_are_put_back_after_the_cycle_and_at_the_end(tmp_path):
    s = _node(tmp_path)
    try:
        for args in OPERATOR:  # how the operator runs this node
            _smi(s, *args)
        wanted = gpu_settings.read(s.node, GPU, CTX)
        soak = Soak(s.node, "r", SoakOptions(actions=("flr",), ladder=False), [GPU])
        soak.start(tmp_path / "j.jsonl", tmp_path / "state.json")
        assert json.loads((tmp_path / "state.json").read_text())["settings"][str(GPU)]["compute_mode"] == "Exclusive_Process"
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "recovered", r.explain()
        assert gpu_settings.read(s.node, GPU, CTX) == wanted  # the FLR wiped them; they were put back
        (note,) = [n for n in read_journal(tmp_path / "j.jsonl").notes if n["type"] == "settings"]
        put = {c["setting"]: (c["found"], c["saved"]) for c in note["changes"] if c["status"] == "put_back"}
        assert put == {"compute_mode": ("Default", "Exclusive_Process"), "power_limit_w": (700.0, 500.0),
                       "app_clock_graphics_mhz": (1980, 1600), "accounting_mode": (False, True),
                       "persistence_mode": (False, True)}
        s.kernel.wipe_settings(s.kernel.gpus[GPU])  # as a driver reload the run did not see would
        changes = soak.finish()
        assert f"compute_mode of {GPU} -> Exclusive_Process (was Default)" in changes
        assert gpu_settings.read(s.node, GPU, CTX) == wanted
    finally:
        s.node.close()


def test_a_setting_nvidia_smi_cannot_give_is_never_set_back(tmp_path):
    s = _node(tmp_path, 'settings = {"clocks.applications.graphics" = "[N/A]", "clocks.applications.memory" = "[N/A]"}')
    try:
        _smi(s, "-c", "3")
        soak = Soak(s.node, "r", SoakOptions(actions=("flr",), ladder=False), [GPU])
        soak.start(tmp_path / "j.jsonl", tmp_path / "state.json")
        saved = json.loads((tmp_path / "state.json").read_text())["settings"][str(GPU)]
        assert saved["app_clock_graphics_mhz"] is None and saved["na"]["app_clock_graphics_mhz"] == "[N/A]"
        assert soak.run_cycle(GPU, "flr", 1).outcome == "recovered"
        assert gpu_settings.read(s.node, GPU, CTX).compute_mode == "Exclusive_Process"
        assert not [c for c in s.node.runner.calls if "-ac" in c]
    finally:
        s.node.close()


def test_while_the_run_has_persistenced_stopped_settings_wait_for_the_end(tmp_path):
    # Without the daemon the GPUs are not persistent: settings made now would be torn down with the
    # next close, and -pm 1 would be the deprecated legacy mode. They come back after the daemon.
    path = tmp_path / "s.toml"
    path.write_text('[[gpu]]\nbdf = "0000:18:00.0"\n')
    s = open_sim_node(str(path))
    try:
        _smi(s, "-c", "3")
        wanted = gpu_settings.read(s.node, GPU, CTX)
        soak = Soak(s.node, "r", SoakOptions(actions=("flr",), ladder=False), [GPU])
        soak.start(tmp_path / "j.jsonl", tmp_path / "state.json")
        assert s.kernel.services["nvidia-persistenced"] == "inactive"  # the run stopped it
        before = len(s.node.runner.calls)
        assert soak.run_cycle(GPU, "flr", 1).outcome == "recovered"
        setters = [c for c in s.node.runner.calls[before:] if c[:1] == ("nvidia-smi",) and {"-c", "-pm"} & set(c)]
        assert setters == [], setters  # nothing put back mid-run, no legacy -pm 1
        soak.finish()
        assert s.kernel.services["nvidia-persistenced"] == "active"
        assert gpu_settings.read(s.node, GPU, CTX).compute_mode == wanted.compute_mode == "Exclusive_Process"
    finally:
        s.node.close()
