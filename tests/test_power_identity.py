"""Idle power states (runtime PM) and the GPU's identity across cycles (issue 13, items 8 and 10)."""

from gpusoak import state as node_state
from gpusoak.journal import read
from gpusoak.model import FAILED, RECOVERED, PciAddress, Snapshot
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
from gpusoak.verdict.score import classify_gpu
from gpusoak.verify import BLIND, FAIL, PASS, compare

GPU = PciAddress.parse("0000:18:00.0")
OTHER = PciAddress.parse("0000:2a:00.0")


def _sim(tmp_path, gpus):
    path = tmp_path / "s.toml"
    path.write_text('[services]\nnvidia-persistenced = "inactive"\n' + "".join(
        f'[[gpu]]\nbdf = "{bdf}"\n{extra}\n' for bdf, extra in gpus))
    return open_sim_node(str(path))


def _soak(sim, tmp_path, gpus, **options):
    soak = Soak(sim.node, "run-1", SoakOptions(ladder=False, **options), list(gpus))
    soak.start(tmp_path / "journal.jsonl", tmp_path / "state.json")
    return soak


def _power(sim, bdf):
    fn = sim.node.sysfs.function(bdf)
    return fn.power_state, fn.runtime_pm


def test_a_vfio_bound_gpu_idling_in_d3hot_is_resumed_soaked_and_put_back_to_auto(tmp_path):
    # vfio_pci_core_register_device: pm_runtime_allow, pm_runtime_put: idle in D3hot, control auto.
    s = _sim(tmp_path, [(GPU, "vfio = true")])
    try:
        assert _power(s, GPU) == ("D3hot", "auto")
        soak = _soak(s, tmp_path, [GPU], actions=("flr",))
        assert GPU not in soak.out_of_service, soak.out_of_service
        assert _power(s, GPU) == ("D0", "on") and soak.baselines[GPU].power_state == "D0"
        saved = node_state.load(tmp_path / "state.json")
        assert {f.bdf: f.runtime_pm for f in saved.functions}[str(GPU)] == "auto"  # for `gpusoak restore`
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == RECOVERED, r.explain()
        assert {c.name: c.status for c in r.checks}["power_state"] == PASS
        soak.finish()
        assert _power(s, GPU) == ("D3hot", "auto")  # as it was found
        assert any(n.get("type") == "runtime_pm" for n in read(tmp_path / "journal.jsonl").notes)
    finally:
        s.node.close()


def test_an_rtd3_gpu_in_d3cold_is_held_in_d0_across_a_rebind(tmp_path):
    # Runtime D3 under nvidia: idle in D3cold; the README's udev rule sets auto again at every bind,
    # so the soak turns runtime PM off again after the action, and compares D0 with D0.
    s = _sim(tmp_path, [(GPU, 'power_control = "auto"\nrtd3 = true')])
    try:
        assert _power(s, GPU) == ("D3cold", "auto")
        assert s.node.sysfs.function(GPU).link.current_speed == "Unknown"
        soak = _soak(s, tmp_path, [GPU], actions=("rebind",))
        # Resumed: the link answers again (at the idle generation an NVIDIA GPU drops to), full width.
        link = soak.baselines[GPU].link
        assert (link.current_speed, link.current_width) == ("2.5 GT/s PCIe", 16)
        r = soak.run_cycle(GPU, "rebind", 1)
        assert r.outcome == RECOVERED, r.explain()
        soak.finish()
        assert _power(s, GPU) == ("D3cold", "auto")
    finally:
        s.node.close()


def test_a_runtime_suspended_power_state_could_not_look_and_d3_without_auto_fails():
    base = Snapshot("0000:18:00.0", True, "D0", "nvidia", runtime_pm="on", nvml_status="ok")
    now = Snapshot("0000:18:00.0", True, "D3cold", "nvidia", runtime_pm="auto", nvml_status="ok")
    power = {c.name: c for c in compare(base, now)}["power_state"]
    assert power.status == BLIND and "runtime-suspended" in power.detail
    stuck = Snapshot("0000:18:00.0", True, "D3cold", "nvidia", runtime_pm="on", nvml_status="ok")
    assert {c.name: c.status for c in compare(base, stuck)}["power_state"] == FAIL


def test_a_minor_that_changes_after_remove_rescan_is_a_finding_and_fails_when_strict(tmp_path):
    # nv_linux_assign_minor_locked gives the lowest free minor at probe: the node's history left a
    # gap at /dev/nvidia1, and the rescanned GPU takes it.
    for strict in (False, True):
        (tmp_path / str(strict)).mkdir()
        s = _sim(tmp_path / str(strict), [(GPU, "minor = 0"), (OTHER, "minor = 2")])
        try:
            soak = _soak(s, tmp_path / str(strict), [OTHER], actions=("remove_rescan",), identity_strict=strict)
            assert soak.baselines[OTHER].minor == 2 and soak.baselines[OTHER].nvml_index == 1
            r = soak.run_cycle(OTHER, "remove_rescan", 1)
            assert r.minor == 1 and r.nvml_index == 1
            assert "minor_changed" in [f.reason for f in r.findings], r.explain()
            assert "/dev/nvidia1, was /dev/nvidia2" in r.explain()
            assert r.outcome == (FAILED if strict else RECOVERED), r.explain()
            if not strict:  # the reports carry it: the GPU's evidence in result.json and the HTML
                assert "minor changed in 1 recovered cycle(s)" in classify_gpu(str(OTHER), None, [r]).evidence
        finally:
            s.node.close()


def test_the_plan_says_which_functions_get_runtime_pm_turned_off(tmp_path):
    from gpusoak import plan

    s = _sim(tmp_path, [(GPU, "vfio = true"), (OTHER, "")])
    try:
        p = plan.make(s.node, [GPU, OTHER], SoakOptions())
        assert p["runtime_pm_off"] == [str(GPU)]
        assert f"runtime PM off for the run (power/control on; auto again at the end): {GPU}" in plan.render(p)
    finally:
        s.node.close()


def test_an_index_moved_by_a_gpu_that_left_the_driver_is_no_failure_even_when_strict(tmp_path):
    # NVML numbers the GPUs nvidia drives: with the first one unbound (a GPU that failed, say),
    # the second's index drops by one. That is the other GPU's doing, not this one's.
    s = _sim(tmp_path, [(GPU, ""), (OTHER, "")])
    try:
        soak = _soak(s, tmp_path, [OTHER], actions=("flr",), identity_strict=True)
        assert soak.baselines[OTHER].nvml_index == 1
        s.kernel.write(s.node.sysfs.root / "bus/pci/drivers/nvidia/unbind", str(GPU))
        r = soak.run_cycle(OTHER, "flr", 1)
        assert r.nvml_index == 0 and r.outcome == RECOVERED, r.explain()
        (moved,) = [f for f in r.findings if f.reason == "index_changed"]
        assert f"nvidia no longer drives {GPU}" in moved.detail
    finally:
        s.node.close()
