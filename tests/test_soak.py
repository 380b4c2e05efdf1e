"""One cycle end to end on the simulated node: outcomes, reasons, windows, deadlines."""

import json
import threading

import pytest

from gpusoak.journal import read
from gpusoak.model import FAILED, HUNG, INCONCLUSIVE, RECOVERED, REFUSED, SKIPPED, PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
from gpusoak.verify import BLIND, FAIL, SKIP, compare, snapshot
from tests.conftest import after_reset

GPU = PciAddress.parse("0000:18:00.0")
FLAKY = PciAddress.parse("0000:9a:00.0")


def _soak(sim, tmp_path, gpus=(GPU,), **options):
    options.setdefault("ladder", False)  # these tests look at one cycle; the ladder has its own tests
    soak = Soak(sim.node, "run-1", SoakOptions(**options), list(gpus))
    soak.start(tmp_path / "journal.jsonl")
    return soak


def test_healthy_cycle_recovers_and_is_journaled(sim, tmp_path):
    soak = _soak(sim, tmp_path)
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == RECOVERED and r.findings == ()
    assert 0.1 <= r.recovery_s <= 1.5  # 100 ms FLR wait, then link retraining within a second
    statuses = {c.name: c.status for c in r.checks}
    assert {k: statuses[k] for k in ("present", "power_state", "driver", "link_width", "nvml")} \
        == dict.fromkeys(["present", "power_state", "driver", "link_width", "nvml"], "pass")
    # Speed is compared under load only, and this run has no post-check: not applicable, said so.
    (speed,) = [c for c in r.checks if c.name == "link_speed"]
    assert speed.status == "skip" and speed.detail == "not compared: no load after the reset (no post-check)"
    assert statuses["gate_retired_pages"] == "pass"
    # The 10 s settle window (the default) puts the gate's reading 10 s after the baseline: a rate.
    assert r.duration_s >= 10.0 and statuses["gate_pcie_replay_rate"] == "pass"
    assert read(tmp_path / "journal.jsonl").results == [r]


def test_flaky_flr_fails_with_named_reasons(sim, tmp_path):
    # With the ladder: a failed bind-back leaves the dead GPU unbound, and binding it back after a
    # later reset is the ladder's job (the flr action binds back only what it unbound itself).
    soak = _soak(sim, tmp_path, gpus=(FLAKY,), ladder=True, ladder_module_reload=False)
    results = [soak.run_cycle(FLAKY, "flr", c) for c in range(1, 21)]
    failed = [r for r in results if r.outcome == FAILED]
    assert failed, "p=0.3 over 20 cycles with the scenario's seed fails at least once"
    r = failed[0]
    reasons = [f.reason for f in r.findings]
    assert reasons[0] == "flr_not_ready" and "reset_write_failed" in reasons
    # FLR now runs unbound: the bind-back of the dead GPU fails its probe, and says so.
    assert {"rminit_failed", "bind_back_failed"} <= set(reasons)
    # The dead function's x63 fails link_width; its speed is not judged at idle (a GPU lowers it there).
    assert {"link_width", "nvml"} <= {f.reason for f in r.findings}
    assert r.events[0].text == "nvidia 0000:9a:00.0: not ready 65535ms after FLR; giving up"
    # A later FLR can bring it back: the next cycles are judged on their own.
    assert any(x.outcome == RECOVERED for x in results[results.index(r) + 1:])


def test_old_kernel_lines_do_not_fail_a_cycle(sim, tmp_path):
    soak = _soak(sim, tmp_path)
    sim.kernel.log(4, "NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=x, GPU has fallen off the bus.")
    assert soak.run_cycle(GPU, "flr", 1).outcome == RECOVERED


def test_a_fatal_event_during_the_cycle_fails_it(sim, tmp_path, record_writes):
    soak = _soak(sim, tmp_path)
    after_reset(sim, lambda: sim.kernel.log(4, "NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=x, GPU has fallen off the bus."))
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == FAILED and r.reason == "xid_79"


def test_an_informational_xid_does_not_fail_a_cycle(sim, tmp_path, record_writes):
    soak = _soak(sim, tmp_path)
    # Xid 45: channels torn down by the reset itself
    after_reset(sim, lambda: sim.kernel.log(4, "NVRM: Xid (PCI:0000:18:00): 45, pid=1, name=x, Ch 00000010"))
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == RECOVERED and [e.xid for e in r.events] == [45]


def test_degraded_link_is_caught_at_the_deadline(sim, tmp_path, record_writes):
    soak = _soak(sim, tmp_path, recovery_deadline_s=5.0)
    after_reset(sim, lambda: sim.kernel.tree.set_attr(GPU, "current_link_width", "8"))
    start = sim.node.clock.monotonic()
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == FAILED
    assert [f.reason for f in r.findings] == ["link_width", "recovery_timeout"]
    assert "link x8, expected x16" in r.findings[0].detail
    assert 5.0 <= sim.node.clock.monotonic() - start <= 5.5  # polled to the deadline, not past it


def test_nvml_unavailable_makes_an_nvidia_gpus_cycle_inconclusive_never_recovered(sim, tmp_path, capsys):
    # sysfs alone (present, D0, bound, link) is trivially true after a reset under a live driver:
    # with NVML unable to look, the cycle has not been shown to recover.
    sim.node.nvml, sim.node.nvml_unavailable = None, "NVML not available: NVML Shared Library Not Found"
    soak = _soak(sim, tmp_path)
    assert "NVML is unavailable" in capsys.readouterr().err  # said before the first cycle
    r = soak.run_cycle(GPU, "flr", 1)
    nvml_check = next(c for c in r.checks if c.name == "nvml")
    assert r.outcome == INCONCLUSIVE and not r.attempted, r.explain()
    assert nvml_check.status == BLIND and "Library Not Found" in nvml_check.detail
    assert r.findings[0].reason == "cannot_look"
    from gpusoak.verdict import score

    (g,) = score.verdict("n", [(str(GPU), None)], [r]).gpus
    assert g.gpu_class == "inconclusive" and score.reliability([r])[0] == "inconclusive"


def test_a_gpu_unhealthy_before_the_soak_is_not_soaked(sim, tmp_path, record_writes):
    sim.kernel._die(sim.kernel.gpus[GPU])
    soak = _soak(sim, tmp_path)
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == SKIPPED and r.reason == "not_healthy_before_soak"
    assert "NVML: gpu_lost" in r.findings[0].detail
    assert record_writes == []


def test_a_hung_write_takes_the_gpu_out_and_the_run_goes_on(sim, tmp_path):
    release = threading.Event()
    inner = sim.kernel.write

    def writer(path, data):
        if path.name == "reset" and path.parent.name == str(GPU):
            release.wait(30)
        inner(path, data)

    sim.node.sysfs._writer = writer
    # The default 90 s deadline: the simulator waits 1 % of it in real time (0.9 s), which no
    # ordinary simulated write comes near, however busy the machine.
    soak = _soak(sim, tmp_path, gpus=(GPU, PciAddress.parse("0000:2a:00.0")))
    try:
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == HUNG and r.reason == "hung" and "90 s" in r.findings[0].detail
        assert soak.run_cycle(GPU, "flr", 2).outcome == SKIPPED
        assert soak.run_cycle(PciAddress.parse("0000:2a:00.0"), "flr", 1).outcome == RECOVERED
    finally:
        release.set()


def test_real_node_without_opt_in_writes_nothing(sim, tmp_path, record_writes):
    sim.node.backend = "real"
    soak = _soak(sim, tmp_path)
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == REFUSED and r.reason == "not_authorised" and "--destructive" in r.findings[0].detail
    assert record_writes == []
    soak.options = SoakOptions(destructive=True)
    assert soak.run_cycle(GPU, "flr", 2).outcome == RECOVERED and record_writes


def test_refused_cycles_are_recorded_not_attempted(sim, tmp_path, record_writes):
    sim.node.is_root = False
    r = _soak(sim, tmp_path).run_cycle(GPU, "flr", 1)
    assert r.outcome == REFUSED and r.reason == "not_root" and not r.attempted
    assert record_writes == []


def test_compare_fails_lost_and_unbound(sim):
    base = snapshot(sim.node, GPU)
    sim.kernel._die(sim.kernel.gpus[GPU])
    sim.kernel.tree.unbind(GPU)
    checks = {c.name: c for c in compare(base, snapshot(sim.node, GPU))}
    assert checks["driver"].status == FAIL and "no driver" in checks["driver"].detail
    assert checks["nvml"].status == FAIL


def test_options_are_validated():
    with pytest.raises(Exception, match="--cycles"):
        SoakOptions(cycles=0)
    with pytest.raises(Exception, match="unknown action"):
        SoakOptions(actions=("melt",))


def test_nvml_is_not_asked_about_a_function_of_another_vendor(sim):
    bridge = PciAddress.parse("0000:17:01.0")  # the GPU's Intel root port
    snap = snapshot(sim.node, bridge)
    assert snap.nvml_status == "not_applicable: not an NVIDIA GPU (vendor 0x8086): NVML has nothing to say"
    nvml = next(c for c in compare(snap, snap) if c.name == "nvml")
    assert nvml.status == SKIP and "not an NVIDIA GPU" in nvml.detail


def _services_node(tmp_path, services):
    path = tmp_path / "services.toml"
    path.write_text("[services]\n" + "".join(f'{u} = "active"\n' for u in services)
                    + '[[gpu]]\nbdf = "0000:18:00.0"\n[[gpu]]\nbdf = "0000:2a:00.0"\n')
    return open_sim_node(str(path))


def _service_calls(node):
    return [c for c in node.runner.calls if c[:2] in (("systemctl", "stop"), ("systemctl", "start"))]


def test_a_destructive_soak_stops_the_gpu_services_once_and_starts_them_at_the_end(tmp_path):
    s = _services_node(tmp_path, ["nvidia-persistenced", "nvidia-dcgm"])
    try:
        gpus = s.node.gpus()
        soak = Soak(s.node, "run-1", SoakOptions(ladder=False), gpus)
        soak.start(tmp_path / "journal.jsonl", tmp_path / "state.json")
        assert _service_calls(s.node) == [("systemctl", "stop", "nvidia-dcgm"), ("systemctl", "stop", "nvidia-persistenced")]
        assert json.loads((tmp_path / "state.json").read_text())["stopped_services"] == ["nvidia-dcgm", "nvidia-persistenced"]
        for c in (1, 2):
            for g in gpus:
                assert soak.run_cycle(g, "flr", c).outcome == RECOVERED
        assert len(_service_calls(s.node)) == 2  # not restarted between cycles
        # Started again behind the run's back: holders are checked again, and the cycle is refused.
        s.node.runner.run(["systemctl", "start", "nvidia-dcgm"], timeout_s=5)
        r = soak.run_cycle(gpus[0], "flr", 3)
        assert r.outcome == REFUSED and {f.reason for f in r.findings} == {"service_active", "held_by_process"}
        s.node.runner.run(["systemctl", "stop", "nvidia-dcgm"], timeout_s=5)
        soak.finish()
        assert _service_calls(s.node)[-2:] == [("systemctl", "start", "nvidia-persistenced"),  # the reverse order
                                               ("systemctl", "start", "nvidia-dcgm")]
        assert s.kernel.services["nvidia-persistenced"] == s.kernel.services["nvidia-dcgm"] == "active"
        content = read(tmp_path / "journal.jsonl")
        assert {"type": "services", "stopped": ["nvidia-dcgm", "nvidia-persistenced"], "failed": []} in content.notes
        assert not content.problems
    finally:
        s.node.close()


def test_keep_services_refuses_every_action_naming_the_units(tmp_path):
    from gpusoak.actions import GPU_ACTIONS

    s = _services_node(tmp_path, ["nvidia-persistenced", "dcgm"])
    try:
        soak = Soak(s.node, "run-1", SoakOptions(keep_services=True, ladder=False), s.node.gpus())
        soak.start(tmp_path / "journal.jsonl", tmp_path / "state.json")
        for action in GPU_ACTIONS:
            r = soak.run_cycle(GPU, action, 1)
            why = {f.reason: f.detail for f in r.findings}
            assert r.outcome == REFUSED and why["service_active"].startswith("dcgm, nvidia-persistenced active"), action
        (r, _) = soak.run_node_cycle("module_reload", 1)
        assert r.outcome == REFUSED and "--keep-services" in {f.reason: f.detail for f in r.findings}["service_active"]
        assert _service_calls(s.node) == []
        assert soak.finish() == []
    finally:
        s.node.close()


def test_fabric_manager_and_imex_are_never_stopped(tmp_path):
    s = _services_node(tmp_path, ["nvidia-persistenced", "nvidia-fabricmanager", "nvidia-imex"])
    try:
        soak = Soak(s.node, "run-1", SoakOptions(actions=("flr", "module_reload"), ladder=False), s.node.gpus())
        soak.start(tmp_path / "journal.jsonl", tmp_path / "state.json")
        assert _service_calls(s.node) == [("systemctl", "stop", "nvidia-persistenced")]
        assert soak.run_cycle(GPU, "flr", 1).outcome == RECOVERED  # they hold nvidiactl, no one GPU
        (r, _) = soak.run_node_cycle("module_reload", 1)
        assert r.outcome == REFUSED and r.reason == "fabric_service_running"  # for the whole run: not applicable
        assert r.findings[0].detail.startswith("nvidia-fabricmanager, nvidia-imex active; gpusoak never stops")
        soak.finish()
        assert all(c[2] == "nvidia-persistenced" for c in _service_calls(s.node))
        assert s.kernel.services["nvidia-fabricmanager"] == s.kernel.services["nvidia-imex"] == "active"
    finally:
        s.node.close()
def _markers(sim, cursor=-1):
    return [(r.facility, r.message) for r in sim.node.kmsg.records_since(cursor) if r.message.startswith("gpusoak:")]


def _one_gpu(tmp_path, extra=""):
    from gpusoak.sim import open_sim_node

    path = tmp_path / "s.toml"
    path.write_text(extra + '\n[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n')
    return open_sim_node(str(path))


def test_cycle_markers_bracket_the_action_in_the_kernel_log(sim, tmp_path, record_writes):
    soak = _soak(sim, tmp_path)
    cursor = sim.node.kmsg.cursor()
    after_reset(sim, lambda: sim.kernel.log(4, "NVRM: Xid (PCI:0000:18:00): 45, pid=1, name=x, Ch 00000010"))
    r = soak.run_cycle(GPU, "flr", 2)
    messages = [rec.message for rec in sim.node.kmsg.records_since(cursor)]
    begin, end = "gpusoak: cycle 2 flr 0000:18:00.0 begin", "gpusoak: cycle 2 flr 0000:18:00.0 end"
    assert messages.index(begin) < messages.index(next(m for m in messages if "Xid" in m)) < messages.index(end)
    assert _markers(sim, cursor) == [(1, begin), (1, end)]
    assert r.outcome == RECOVERED and [e.xid for e in r.events] == [45]  # the markers are no events


def test_a_node_cycle_is_marked_once_and_a_failed_marker_fails_no_cycle(tmp_path):
    s = _one_gpu(tmp_path)
    try:
        (r,) = _soak(s, tmp_path, actions=("module_reload",)).run_node_cycle("module_reload", 1)
        assert r.outcome == RECOVERED, r.explain()
        assert _markers(s) == [(1, "gpusoak: cycle 1 module_reload node begin"),
                               (1, "gpusoak: cycle 1 module_reload node end")]
    finally:
        s.node.close()
    (tmp_path / "off").mkdir()
    s = _one_gpu(tmp_path / "off", 'devkmsg = "off"')  # printk.devkmsg=off: the open fails with EPERM
    try:
        assert _soak(s, tmp_path / "off").run_cycle(GPU, "flr", 1).outcome == RECOVERED
        assert _markers(s) == []
    finally:
        s.node.close()


def test_a_read_error_on_the_gpu_under_test_is_a_failed_check_and_the_run_goes_on(tmp_path):
    # A GPU stuck in D3cold: its link attributes answer EINVAL. That is evidence against the GPU,
    # never gpusoak's crash (which journaled it SKIPPED gpusoak_error and stopped the run).
    path = tmp_path / "two.toml"
    path.write_text('[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n'
                    'profile = "d3cold-stuck"\np = 1.0\n[[gpu]]\nbdf = "0000:2a:00.0"\n')
    s = open_sim_node(str(path))
    try:
        soak = _soak(s, tmp_path, gpus=(GPU, PciAddress.parse("0000:2a:00.0")))
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == FAILED, r.explain()
        read = next(c for c in r.checks if c.name == "sysfs_read")
        assert read.status == FAIL and "EINVAL" in read.detail and "current_link" in read.detail
        assert soak.run_cycle(PciAddress.parse("0000:2a:00.0"), "flr", 1).outcome == RECOVERED  # and on it goes
    finally:
        s.node.close()
