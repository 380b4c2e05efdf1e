"""The scheduler: the node gate, lines of simulated time, parallel against serial, budgets,
rotation and progress, on the simulated node."""

import threading
import time

import pytest

from gpusoak.clock import VirtualClock
from gpusoak.model import INDEX_CHANGED, MINOR_CHANGED, PciAddress
from gpusoak.schedule import NodeGate, Plan, Scheduler, supported_actions
from gpusoak.sim import open_sim_node
from gpusoak.sim import scenario as scenarios
from gpusoak.soak import Soak, SoakOptions
from gpusoak.verdict.sprt import SprtParams


def _soak(tmp_path, scenario, actions, name="j", only=None):
    sim = open_sim_node(scenario)
    gpus = [g for g in sim.node.gpus() if only is None or str(g) in only]
    soak = Soak(sim.node, "r", SoakOptions(actions=actions, destructive=True, load_seconds=0.0), gpus)
    soak.start(tmp_path / f"{name}.jsonl")
    return sim, soak


def _run(tmp_path, scenario, plan, name="j", only=None, **kw):
    sim, soak = _soak(tmp_path, scenario, plan.actions, name, only)
    try:
        sched = Scheduler(soak, plan, **kw)
        sched.run()
        return sched
    finally:
        soak.journal.close()
        sim.node.close()


def test_the_gate_keeps_node_actions_apart_from_gpu_cycles():
    gate = NodeGate()
    order: list[str] = []
    entered = threading.Event()

    def gpu_cycle():
        with gate.shared():
            order.append("shared in")
            entered.set()
            time.sleep(0.2)
            order.append("shared out")

    def node_cycle():
        entered.wait()
        with gate.exclusive():
            order.append("exclusive")

    threads = [threading.Thread(target=gpu_cycle), threading.Thread(target=node_cycle)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    # A new shared holder waits while the exclusive side is waiting: it is not starved.
    late = threading.Thread(target=lambda: (gate.shared().__enter__(), order.append("late shared")))
    time.sleep(0.05)
    late.start()
    for t in threads + [late]:
        t.join(5)
    assert order == ["shared in", "shared out", "exclusive", "late shared"]


def test_each_worker_has_its_own_line_of_time_and_merge_takes_the_latest():
    clock = VirtualClock(start=10.0)
    ends = []

    def work(seconds):
        with clock.branch():
            clock.sleep(seconds)
            ends.append(clock.monotonic())

    threads = [threading.Thread(target=work, args=(s,)) for s in (5, 30, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ends) == [15.0, 22.0, 40.0] and clock.monotonic() == 10.0
    clock.merge(ends)
    assert clock.monotonic() == 40.0  # the node's time is its slowest worker's


@pytest.mark.parametrize("node", ["mixed-fleet/node-a", "mixed-fleet/node-b"])
def test_parallel_and_serial_runs_give_the_same_results(tmp_path, node):
    actions = scenarios.load(node).actions
    # A coarse test (p1 20 %: a clean GPU is accepted after 14 cycles) keeps both runs short; what
    # is compared is every cycle's result and every sequence's outcome, not the test's power.
    quick = SprtParams(p0=0.005, p1=0.2, cap=40)
    par = _run(tmp_path, node, Plan(actions=actions, sequential=quick), "par")
    ser = _run(tmp_path, node, Plan(actions=actions, sequential=quick, parallel=False), "ser")

    def reason(r):
        # Not the identity findings: GPUs unbound at once come back with the lowest free minors in
        # the order the parallel workers bind them (nv_linux_assign_minor_locked), as on a real node.
        return next((f.reason for f in r.findings if f.reason not in (MINOR_CHANGED, INDEX_CHANGED)), None)

    def outcomes(s):
        return sorted((r.bdf, r.action, r.cycle, r.outcome, reason(r), r.recovered_by) for r in s.results)

    assert outcomes(par) == outcomes(ser)
    assert not [f for r in ser.results for f in r.findings if f.reason in (MINOR_CHANGED, INDEX_CHANGED)]
    assert {k: v.outcome for k, v in par.sequences.items()} == {k: v.outcome for k, v in ser.sequences.items()}
    assert par.node_seconds < ser.node_seconds / 2  # four or five GPUs at once


def test_a_budget_stops_every_worker_and_rotation_leaves_each_action_with_cycles(tmp_path):
    # 400 s of node time: a dozen cycles of each action, each with its 10 s settle window.
    plan = Plan(actions=("flr", "rebind", "vfio_cycle"), sequential=SprtParams(cap=1000), budget_s=400.0, rotate=True)
    sched = _run(tmp_path, "mixed-fleet/node-b", plan)
    assert all(s.stopped for s in sched.sequences.values())
    for bdf in ("0000:18:00.0", "0000:19:00.0"):  # the healthy GPUs: cut by the budget, undecided
        cut = [s for (b, _), s in sched.sequences.items() if b == bdf]
        assert all(s.stopped == "budget" and s.outcome == "undecided" and s.failures == 0 for s in cut), cut
        counts = [s.cycles for s in cut]
        assert min(counts) > 10 and max(counts) - min(counts) <= 1  # taken in turn
    longest = max(r.duration_s for r in sched.results)
    assert sched.node_seconds <= plan.budget_s + longest + 1


def test_progress_reports_cycles_failures_estimate_and_time_left(tmp_path):
    seen = []
    plan = Plan(actions=("flr",), sequential=SprtParams(cap=300))
    _run(tmp_path, "mixed-fleet/node-e", plan, on_progress=lambda p: seen.append([vars(g).copy() for g in p.gpus.values()]),
         progress_every_s=0.0)
    middle = [g for snap in seen[:-1] for g in snap if g["cycles"] and not g["done"]]
    assert middle and all(g["left_s"] is not None and g["left_s"] >= 0 for g in middle)
    assert any("flr" in g["estimate"] for g in middle)
    last = {g["bdf"]: g for g in seen[-1]}
    assert all(g["done"] for g in last.values())
    assert last["0000:18:00.0"]["cycles"] == 150 and last["0000:18:00.0"]["failures"] == 0


def test_supported_actions_are_those_some_gpu_can_run(tmp_path):
    sim, soak = _soak(tmp_path, "mixed-fleet/node-c", ("flr",))
    try:
        got = supported_actions(sim.node, soak.gpus, soak.ctx)
        assert "flr" in got and "pm_reset" not in got  # NVIDIA GPUs list no pm reset method
        assert "bus_reset" in got  # refused only for the two GPUs behind one switch
        assert "module_reload" in got  # nvidia-persistenced holds the driver, but the run has stopped it
    finally:
        soak.journal.close()
        sim.node.close()


def test_a_gpu_taken_out_of_the_run_stops_its_worker(tmp_path):
    plan = Plan(actions=("flr", "rebind"), sequential=SprtParams(cap=300))
    # 0000:5d:00.0 sticks in D3cold (reboot required); a healthy GPU beside it goes on.
    sched = _run(tmp_path, "mixed-fleet/node-b", plan, only=("0000:5d:00.0", "0000:18:00.0"))
    flr, rebind = sched.sequences[("0000:5d:00.0", "flr")], sched.sequences[("0000:5d:00.0", "rebind")]
    assert flr.outcome == "unreliable" and rebind.stopped == "out_of_service" and rebind.cycles < 150
    assert PciAddress.parse("0000:5d:00.0") in sched.soak.out_of_service
    assert sched.sequences[("0000:18:00.0", "rebind")].outcome == "reliable"  # its worker was not stopped


def test_a_stop_lets_every_worker_finish_its_cycle_and_start_no_other(tmp_path):
    # SIGTERM or Ctrl-C arrives in the main thread alone. Before the run may put the node back, the
    # workers must be done: a restore that binds nvidia back while a worker's FLR is still to come
    # would reset the GPU under the live driver.
    import os
    import signal

    plan = Plan(actions=("flr",), cycles=100_000)  # far more than the run can do before the stop
    sim, soak = _soak(tmp_path, None, plan.actions)
    sched = Scheduler(soak, plan)
    stop = threading.Event()

    def interrupt_once_every_gpu_has_cycled():
        while not stop.wait(0.01):
            with sched._lock:
                cycled = {r.bdf for r in sched.results}
            if len(cycled) == len(soak.gpus):
                os.kill(os.getpid(), signal.SIGINT)
                return

    timer = threading.Thread(target=interrupt_once_every_gpu_has_cycled, daemon=True)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            sched.run()
        # (That each worker's cycle has ended before run() raises is the next test's: a thread's
        # own last steps after its cycle may still be under way here, so no thread count.)
        done = {g: sum(s.cycles for (b, _), s in sched.sequences.items() if b == g) for g in map(str, soak.gpus)}
        assert all(0 < n < 100_000 for n in done.values()), done  # stopped early, every GPU
        assert sched.stopping.is_set()
    finally:
        stop.set()
        soak.journal.close()
        sim.node.close()


def test_a_stop_that_lands_in_a_join_still_waits_for_that_worker(tmp_path):
    # On Python 3.11 a KeyboardInterrupt raised inside Thread.join() marks the joined thread as
    # stopped while it still runs (Lib/threading.py, Thread._wait_for_tstate_lock: its bpo-45274
    # handler releases the live thread's own state lock), so is_alive() and join() say it is done.
    # The run must not put the node back until that worker has really finished its cycle: the
    # first worker, the one the main thread joins first, is held longest here.
    import os
    import signal

    plan = Plan(actions=("flr",), cycles=100_000)
    sim, soak = _soak(tmp_path, None, plan.actions)
    sched = Scheduler(soak, plan)
    gpus = [str(g) for g in soak.gpus]
    inside: set[str] = set()
    finished: dict[str, float] = {}
    release = {g: threading.Event() for g in gpus}
    real_cycle = soak.run_cycle

    def held_cycle(bdf, action, n):
        with sched._lock:
            inside.add(str(bdf))
        release[str(bdf)].wait(10)
        try:
            return real_cycle(bdf, action, n)
        finally:
            finished[str(bdf)] = time.monotonic()

    soak.run_cycle = held_cycle

    def interrupt_then_release_the_first_worker_last():
        while len(inside) < len(gpus):
            time.sleep(0.01)
        time.sleep(0.1)  # the main thread is in its wait by now
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        for g in reversed(gpus):
            time.sleep(0.2)
            release[g].set()

    timer = threading.Thread(target=interrupt_then_release_the_first_worker_last, daemon=True)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            sched.run()
        returned = time.monotonic()
        assert set(finished) == set(gpus), finished  # each worker finished the cycle it was in
        assert max(finished.values()) <= returned
        assert all(s.cycles <= 1 for s in sched.sequences.values())  # and started no other
    finally:
        for e in release.values():
            e.set()
        timer.join()
        soak.journal.close()
        sim.node.close()
