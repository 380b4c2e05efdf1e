"""The recovery ladder, the saved state put back, the node lock, and the opt-in for resets."""

import contextlib
import json

import pytest

from gpusoak import state as node_state
from gpusoak.actions import GPU_ACTIONS, Context
from gpusoak.errors import UsageError
from gpusoak.lock import NodeLock
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")


def _sim(tmp_path, profile_lines, services='nvidia-persistenced = "inactive"'):
    path = tmp_path / "s.toml"
    path.write_text(f'[services]\n{services}\n[[gpu]]\nbdf = "0000:18:00.0"\n{profile_lines}\n[[gpu]]\nbdf = "0000:2a:00.0"\n')
    return open_sim_node(str(path))


def _first_failure(tmp_path, profile_lines, action="flr", cycles=30, **opts):
    s = _sim(tmp_path, profile_lines, **({"services": opts.pop("services")} if "services" in opts else {}))
    soak = Soak(s.node, "r", SoakOptions(actions=(action,), **opts), s.node.gpus())
    soak.start(tmp_path / "j.jsonl", tmp_path / "state.json")
    for c in range(1, cycles + 1):
        r = soak.run_cycle(GPU, action, c)
        if r.outcome == "failed":
            return s, soak, r
    raise AssertionError("no failure")


@pytest.mark.parametrize("profile, action, rung", [
    ('profile = "flaky-flr"\np = 0.5', "flr", None),  # a later FLR, or failing that a bus reset
    ('profile = "degraded-link"\np = 1.0', "flr", "bus_reset"),  # only a retrain from the port fixes the link
    ('profile = "vfio-reattach-fails"', "vfio_cycle", "module_reload"),  # only a fresh driver load
])
def test_the_ladder_records_the_rung_that_brought_it_back(tmp_path, profile, action, rung):
    s, soak, r = _first_failure(tmp_path, profile, action)
    try:
        assert r.recovered_by in ((rung,) if rung else ("flr", "bus_reset"))
        assert r.ladder[-1].reason == r.recovered_by and r.ladder[-1].detail == "recovered"
        assert soak.run_cycle(GPU, "flr", 99).outcome == "recovered" or rung == "bus_reset"
    finally:
        s.node.close()


def test_the_ladder_post_checks_the_gpu_after_the_rung_that_brought_it_back(tmp_path):
    # nvidia-smi's documentation: verify each reset GPU's health before further use. The check after
    # the cure is the failed cycle's post_check, the evidence a long-jobs-only class needs.
    s, soak, r = _first_failure(tmp_path, 'profile = "degraded-link"\np = 1.0', post_check_seconds=0.5)
    try:
        assert r.recovered_by == "bus_reset" and r.post_check is not None and r.post_check["exit"] == 0
        assert r.post_check["link_width"] == 16  # loaded on the link the bus reset retrained
    finally:
        s.node.close()
    s, soak, r = _first_failure(tmp_path, 'profile = "degraded-link"\np = 1.0')
    try:
        assert r.recovered_by == "bus_reset" and r.post_check is None  # the run has no post-check
    finally:
        s.node.close()


@pytest.mark.parametrize("profile, load", [('profile = "d3cold-stuck"\np = 1.0', 0.0),
                                           ('profile = "falls-off-bus-under-load"\np = 1.0', 1.0)])
def test_nothing_brings_back_a_stuck_gpu_so_it_needs_a_reboot(tmp_path, profile, load):
    s, soak, r = _first_failure(tmp_path, profile, load_seconds=load)
    try:
        assert r.recovered_by == "reboot_required"
        assert [f.reason for f in r.ladder] == ["flr", "rebind", "bus_reset", "module_reload"]
        assert all(f.detail.startswith("not recovered") for f in r.ladder)
        nxt = soak.run_cycle(GPU, "flr", 2)
        assert nxt.outcome == "skipped" and nxt.reason == "reboot_required"  # out of the run: no load, no reset
    finally:
        s.node.close()


def test_the_ladder_reloads_the_driver_with_the_services_the_run_stopped_still_stopped(tmp_path):
    s, soak, r = _first_failure(tmp_path, 'profile = "d3cold-stuck"\np = 1.0', services='nvidia-persistenced = "active"')
    try:
        assert r.ladder[-1].reason == "module_reload" and r.ladder[-1].detail.startswith("not recovered")
        changing = [c for c in s.node.runner.calls if c[:2] == ("systemctl", "stop") or c[:2] == ("systemctl", "start")]
        assert changing == [("systemctl", "stop", "nvidia-persistenced")]  # once, before the first cycle
        assert ("rmmod", "nvidia") in s.node.runner.calls
        soak.finish()
        assert s.kernel.services["nvidia-persistenced"] == "active"
    finally:
        s.node.close()


def test_restore_starts_the_units_a_crashed_run_stopped(tmp_path, sim_services):
    sim = sim_services
    soak = Soak(sim.node, "r", SoakOptions(ladder=False), sim.node.gpus())
    soak.start(tmp_path / "j.jsonl", tmp_path / "state.json")
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["stopped_services"] == ["nvidia-persistenced"] and saved["services"]["nvidia-persistenced"] is True
    assert sim.kernel.services["nvidia-persistenced"] == "inactive"
    # The run dies here (no finish); `gpusoak restore state.json` starts what it stopped.
    changes = node_state.restore(sim.node, node_state.load(tmp_path / "state.json"), Context())
    assert "systemctl start nvidia-persistenced" in changes and sim.kernel.services["nvidia-persistenced"] == "active"
    pid = sim.kernel.service_pids["nvidia-persistenced"]
    assert sim.kernel.procs.holders(sim.kernel.procs.devices["nvidia0"]) == [pid]  # it holds the GPUs again


def test_a_hanging_unbind_is_contained(tmp_path):
    s = _sim(tmp_path, 'profile = "unbind-hangs"')
    try:
        soak = Soak(s.node, "r", SoakOptions(actions=("rebind",)), s.node.gpus())
        soak.start(tmp_path / "j.jsonl")
        import time
        t = time.monotonic()
        r = soak.run_cycle(GPU, "rebind", 1)
        assert time.monotonic() - t < 5  # 90 s deadline on the simulated clock: under a second here
        assert r.outcome == "hung" and r.reason == "hung" and r.duration_s == 90.0
        logged = [rec.message for rec in s.node.kmsg.records_since(-1)]
        assert "NVRM: Attempting to remove device 0000:18:00.0 with non-zero usage count!" in logged
        assert soak.run_cycle(GPU, "rebind", 2).reason == "out_of_service"
        assert soak.run_cycle(PciAddress.parse("0000:2a:00.0"), "rebind", 1).outcome == "recovered"
    finally:
        for ev in s.kernel.blocked:
            ev.set()
        s.node.close()


def test_saved_state_is_put_back_after_a_failure(tmp_path):
    s = _sim(tmp_path, "")
    try:
        soak = Soak(s.node, "r", SoakOptions(actions=("rebind",), ladder=False), s.node.gpus())
        soak.start(tmp_path / "j.jsonl", tmp_path / "state.json")
        saved = json.loads((tmp_path / "state.json").read_text())
        assert {f["bdf"]: f["driver"] for f in saved["functions"]} == {"0000:18:00.0": "nvidia", "0000:2a:00.0": "nvidia"}
        inner = s.kernel.write

        def bind_fails(path, data):  # the unbind works, the bind back does not: the GPU is left unbound
            if path.name == "bind" and data == str(GPU):
                raise OSError(19, "No such device")
            inner(path, data)

        s.node.sysfs._writer = bind_fails
        r = soak.run_cycle(GPU, "rebind", 1)
        assert r.outcome == "failed" and s.node.sysfs.function(GPU).driver is None
        s.node.sysfs._writer = inner
        s.node.runner.run(["systemctl", "stop", "nvidia-dcgm"], timeout_s=5)
        changes = soak.finish()
        assert f"bind {GPU} to nvidia" in changes and s.node.sysfs.function(GPU).driver == "nvidia"
    finally:
        s.node.close()


def test_restore_puts_back_overrides_runtime_pm_modules_and_services(tmp_path, sim_services):
    sim = sim_services
    ctx = Context(stop_services=True)
    saved = node_state.capture(sim.node, sim.node.gpus(), ctx)
    fn = sim.node.sysfs.function(GPU)
    sim.kernel.write(fn.path / "driver_override", "vfio-pci")
    sim.kernel.tree.unbind(GPU)
    (fn.path / "power" / "control").write_text("auto\n")
    sim.node.runner.run(["rmmod", "nvidia_drm"], timeout_s=5)
    sim.node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5)
    changes = node_state.restore(sim.node, saved, ctx)
    assert not [c for c in changes if c.startswith("FAILED")], changes
    assert fn.driver == "nvidia" and fn.driver_override is None and fn.runtime_pm == "on"
    assert "nvidia_drm" in sim.kernel.modules and sim.kernel.services["nvidia-persistenced"] == "active"
    assert node_state.restore(sim.node, saved, ctx) == []  # nothing left to change


def test_the_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
    first = NodeLock(tmp_path / "gpusoak.lock", "run-one")
    first.acquire()
    try:
        with pytest.raises(UsageError) as err:
            NodeLock(tmp_path / "gpusoak.lock", "run-two").acquire()
        assert "run run-one" in str(err.value) and "pid" in str(err.value)
    finally:
        first.release()
    again = NodeLock(tmp_path / "gpusoak.lock", "run-three")
    again.acquire()
    again.release()


@pytest.mark.parametrize("action", [*GPU_ACTIONS, "module_reload"])
def test_no_destructive_step_on_a_real_node_without_the_opt_in(sim, tmp_path, action, record_writes):
    sim.node.backend = "real"  # what a real node looks like to the soak
    soak = Soak(sim.node, "r", SoakOptions(actions=(action,)), [GPU])
    soak.start(tmp_path / "j.jsonl")
    calls_before = list(sim.node.runner.calls)
    results = soak.run_node_cycle(action, 1) if action == "module_reload" else [soak.run_cycle(GPU, action, 1)]
    assert all(r.outcome == "refused" and r.reason == "not_authorised" for r in results)
    assert record_writes == []
    assert [c for c in sim.node.runner.calls[len(calls_before):] if c[:2] != ("systemctl", "is-active")] == []


def test_a_ladders_driver_reload_judges_its_preconditions_only_with_the_node_to_itself(tmp_path):
    # Another GPU's cycle is running (its query child holds /dev/nvidia1 for a moment) when this
    # GPU's ladder reaches module_reload. Judged then, the reload would be refused for a holder
    # that is gone a moment later (or, mid another ladder's reload, for "nvidia not loaded"):
    # the rung waits for the node gate first and judges what it finds there.
    import threading

    from gpusoak import ladder
    from gpusoak.schedule import NodeGate

    s = _sim(tmp_path, 'profile = "d3cold-stuck"\np = 1.0')
    soak = Soak(s.node, "r", SoakOptions(), s.node.gpus())
    soak.start(tmp_path / "j.jsonl")
    soak.gate = NodeGate()
    entered, done = threading.Event(), threading.Event()

    def other_gpu_cycle():
        with soak.gate.shared():
            pid = s.kernel.procs.spawn("query child of the other GPU")
            s.kernel.procs.open(pid, "nvidia1")
            entered.set()
            for _ in range(500):  # until the ladder waits for the node, at most 5 s
                if soak.gate.exclusive_waiting:
                    break
                done.wait(0.01)
            s.kernel.procs.exit(pid)

    worker = threading.Thread(target=other_gpu_cycle, daemon=True)
    worker.start()
    assert entered.wait(5)
    with soak.gate.shared():
        rungs, by, _ = ladder.climb(soak, GPU)
    worker.join(5)
    reload = next(f for f in rungs if f.reason == "module_reload")
    assert not reload.detail.startswith("skipped"), reload.detail
    assert by == ladder.REBOOT_REQUIRED  # stuck: the reload ran and did not bring it back


def test_the_ladders_driver_reload_looks_for_holders_only_once_no_other_gpus_cycle_runs(tmp_path):
    # Mid-run, GPU 2a's load child holds its GPU, nvidiactl and nvidia-uvm. The node gate lets the
    # ladder's module_reload in once that cycle, and so its child, has ended: only then may it look.
    s = _sim(tmp_path, 'profile = "vfio-reattach-fails"')
    try:
        soak = Soak(s.node, "r", SoakOptions(actions=("vfio_cycle",)), s.node.gpus())
        soak.start(tmp_path / "j.jsonl", tmp_path / "state.json")
        child = s.kernel.procs.spawn("python3")
        for device in ("nvidia1", "nvidiactl", "nvidia-uvm"):
            s.kernel.procs.open(child, device)

        @contextlib.contextmanager
        def node_gate():
            s.kernel.procs.exit(child)  # the other GPU's cycle is over
            yield

        soak.exclusive = node_gate
        for c in range(1, 31):
            r = soak.run_cycle(GPU, "vfio_cycle", c)
            if r.outcome == "failed":
                break
        assert r.recovered_by == "module_reload", r.ladder
    finally:
        s.node.close()
