"""MIG GPUs: refused without --allow-mig; with it, the layout a reset destroys is recreated and
checked after each cycle, a pending mode change is reported before any reset, and the load runs
on a MIG device."""

from types import SimpleNamespace

from gpusoak import mig
from gpusoak.actions.base import Context
from gpusoak.host.commands import CommandResult
from gpusoak.journal import read
from gpusoak.load.child import run_load
from gpusoak.model import FAILED, RECOVERED, REFUSED, PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
from gpusoak.state import load as load_state

GPU = PciAddress.parse("0000:18:00.0")


def _node(tmp_path, mode="Enabled", pending=None, layout=(19, 14)):
    path = tmp_path / "mig.toml"
    path.write_text('[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n'
                    'arch = "ampere"\n'
                    f'mig = {{mode = "{mode}", pending = "{pending or mode}", layout = {list(layout)}}}\n')
    return open_sim_node(str(path))


def _soak(sim, tmp_path, **options):
    options.setdefault("ladder", False)
    soak = Soak(sim.node, "run-1", SoakOptions(**options), [GPU])
    soak.start(tmp_path / "journal.jsonl", tmp_path / "state.json")
    return soak


def test_a_mig_gpu_is_refused_without_the_opt_in(tmp_path):
    sim = _node(tmp_path)
    r = _soak(sim, tmp_path).run_cycle(GPU, "flr", 1)
    assert r.outcome == REFUSED and [f.reason for f in r.findings] == ["mig_enabled"]
    assert "--allow-mig" in r.findings[0].detail
    assert sim.kernel.gpus[GPU].resets == 0 and len(sim.kernel.gpus[GPU].mig.cis) == 2


def test_with_the_opt_in_the_layout_is_recreated_after_flr_and_gpu_reset(tmp_path):
    sim = _node(tmp_path)
    soak = _soak(sim, tmp_path, allow_mig=True, actions=("flr", "gpu_reset"))
    saved = load_state(tmp_path / "state.json").mig[str(GPU)]
    assert [g[:3] for g in saved["gpu_instances"]] == [[19, 0, 1], [14, 2, 2]]
    for n, action in enumerate(("flr", "gpu_reset"), 1):
        before = set(sim.kernel.gpus[GPU].mig.cis.values())
        r = soak.run_cycle(GPU, action, n)
        assert sim.kernel.gpus[GPU].resets == n
        assert r.outcome == RECOVERED, r.findings
        (check,) = [c for c in r.checks if c.name == "mig_layout"]
        assert check.status == "pass" and check.detail.startswith("recreated"), check
        st = sim.kernel.gpus[GPU].mig
        assert sorted(st.gis.values()) == [(14, 2), (19, 0)] and len(st.cis) == 2
        assert not before & set(st.cis.values())  # new instances, new MIG UUIDs
    assert read(tmp_path / "journal.jsonl").header["mig"][str(GPU)]["current"] == "Enabled"


def test_a_failed_recreation_is_a_failed_mig_layout_check(tmp_path):
    sim = _node(tmp_path)
    soak = _soak(sim, tmp_path, allow_mig=True)
    sim.kernel.fail_mig_create(GPU)
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == FAILED
    assert "mig_layout" in [f.reason for f in r.findings]
    (check,) = [c for c in r.checks if c.name == "mig_layout"]
    assert check.status == "fail" and "Insufficient Resources" in check.detail


def test_a_pending_mig_mode_change_is_reported_before_the_first_reset_and_refused(tmp_path, capsys):
    sim = _node(tmp_path, mode="Disabled", pending="Enabled", layout=())
    soak = _soak(sim, tmp_path, allow_mig=True)
    assert "Enabled pending" in capsys.readouterr().err
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == REFUSED and [f.reason for f in r.findings] == ["mig_mode_pending"]
    assert sim.kernel.gpus[GPU].resets == 0 and sim.kernel.gpus[GPU].mig.current == "Disabled"
    content = read(tmp_path / "journal.jsonl")
    assert [n for n in content.notes if n.get("type") == "mig_mode_pending"][0]["pending"] == "Enabled"
    assert content.header["mig"][str(GPU)]["pending"] == "Enabled"


def test_a_node_cycle_on_a_mig_gpu_is_refused_without_the_opt_in(tmp_path):
    sim = _node(tmp_path)
    (r,) = _soak(sim, tmp_path, actions=("module_reload",)).run_node_cycle("module_reload", 1)
    assert r.outcome == REFUSED and r.findings[0].reason == "mig_enabled"


def test_the_load_and_the_post_check_run_on_a_mig_device(tmp_path):
    sim = _node(tmp_path)
    soak = _soak(sim, tmp_path, allow_mig=True, load_seconds=1.0, post_check_seconds=1.0)
    first = set(sim.kernel.gpus[GPU].mig.cis.values())
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == RECOVERED, r.findings
    load, post = sim.node.runner.loads
    assert load.env["CUDA_VISIBLE_DEVICES"] in first
    assert post.env["CUDA_VISIBLE_DEVICES"] in sim.kernel.gpus[GPU].mig.cis.values()


def test_the_simulated_cuda_sees_no_device_by_a_mig_gpus_own_uuid(tmp_path):
    sim = _node(tmp_path)
    summary = run_load(sim.node, GPU, 1.0, 0.5, sim.kernel.gpus[GPU].spec.uuid)
    assert not summary.ok and "no CUDA device" in summary.error


def test_a_reset_destroys_the_instances_and_applies_a_pending_mode_on_ampere(tmp_path):
    sim = _node(tmp_path, pending="Disabled")
    ok = sim.node.runner.run(["nvidia-smi", "-r", "-i", GPU.nvml_bus_id], timeout_s=10)
    assert ok.returncode == 0
    st = sim.kernel.gpus[GPU].mig
    assert st.current == "Disabled" and not st.gis and not st.cis


# Recorded on an A100 PCIe 40GB, driver 510.47.03 (nvidia-smi mig -i 0 -lgi / -lci, nvidia-smi -L).
LGI = """+-------------------------------------------------------+
| GPU instances:                                        |
| GPU   Name             Profile  Instance   Placement  |
|                          ID       ID       Start:Size |
|=======================================================|
|   0  MIG 1g.5gb          19       11          0:1     |
+-------------------------------------------------------+
|   0  MIG 1g.5gb          19       12          1:1     |
+-------------------------------------------------------+
|   0  MIG 2g.10gb         14        6          2:2     |
+-------------------------------------------------------+
|   0  MIG 3g.20gb          9        1          4:4     |
+-------------------------------------------------------+
"""
LCI = """+--------------------------------------------------------------------+
| Compute instances:                                                 |
| GPU     GPU       Name             Profile   Instance   Placement  |
|       Instance                       ID        ID       Start:Size |
|         ID                                                         |
|====================================================================|
|   0     11       MIG 1g.5gb           0         0          0:1     |
+--------------------------------------------------------------------+
|   0     12       MIG 1g.5gb           0         0          0:1     |
+--------------------------------------------------------------------+
"""
LIST = """GPU 0: NVIDIA A100-PCIE-40GB (UUID: GPU-0b4f3c1e-6a4d-6e61-8e7d-4b3264c08d21)
  MIG 1g.5gb      Device  0: (UUID: MIG-b6cd45f2-9655-5269-9b96-65446729d5dc)
"""


class _Recorded:
    def run(self, argv, *, timeout_s, env=None):
        out = {"-lgi": LGI, "-lci": LCI, "-L": LIST}.get(next((a for a in argv if a in ("-lgi", "-lci", "-L")), ""),
                                                           "Enabled, Enabled\n")
        return CommandResult(tuple(argv), 0, out, "", 0.0)


def test_real_nvidia_smi_mig_tables_are_read():
    node = SimpleNamespace(runner=_Recorded())
    state = mig.read(node, PciAddress.parse("0000:0f:00.0"), Context())
    assert state.enabled and not state.change_pending
    assert [g[:3] for g in state.gpu_instances] == [[19, 0, 1], [19, 1, 1], [14, 2, 2], [9, 4, 4]]
    assert state.compute_instances == [[0, 0, 0, 1], [1, 0, 0, 1]]
    assert mig.mig_uuid(node, "GPU-0b4f3c1e-6a4d-6e61-8e7d-4b3264c08d21", Context()) == \
        "MIG-b6cd45f2-9655-5269-9b96-65446729d5dc"


def test_restore_recreates_the_saved_layout_after_a_crash(tmp_path):
    from gpusoak.state import restore

    sim = _node(tmp_path)
    soak = _soak(sim, tmp_path, allow_mig=True)
    # A reset whose cycle never got to put the layout back (the run was killed).
    assert sim.node.runner.run(["nvidia-smi", "-r", "-i", GPU.nvml_bus_id], timeout_s=10).returncode == 0
    assert not sim.kernel.gpus[GPU].mig.gis
    changes = restore(sim.node, load_state(tmp_path / "state.json"), soak.ctx)
    assert any(c.startswith(f"MIG layout of {GPU}: recreated") for c in changes), changes
    assert sorted(sim.kernel.gpus[GPU].mig.gis.values()) == [(14, 2), (19, 0)]


def test_run_passes_allow_mig_to_the_plugin(monkeypatch):
    import pytest

    from gpusoak import cli

    seen = []
    monkeypatch.setattr(pytest, "main", lambda argv, *a, **k: seen.append(argv) or 0)
    monkeypatch.setattr(cli, "_stop_on_sigterm", lambda: None)
    monkeypatch.setattr(cli, "_finish", lambda code, *a: code)
    assert cli.main(["run", "--allow-mig", "--cycles", "1"]) == 0
    assert "--gpusoak-allow-mig" in seen[0]


def test_a_gpu_whose_mig_state_could_not_be_read_is_not_reset(tmp_path, monkeypatch):
    # Unknown is not "no MIG": reset without its layout saved, a MIG GPU would lose its instances.
    from gpusoak import mig

    sim = _node(tmp_path)
    monkeypatch.setattr(mig, "read", lambda node, bdf, ctx: mig.MigState(str(bdf), error="nvidia-smi exited 9"))
    r = _soak(sim, tmp_path, allow_mig=True).run_cycle(GPU, "flr", 1)
    assert r.outcome == "refused" and r.reason == "mig_unknown" and "exited 9" in r.findings[0].detail
