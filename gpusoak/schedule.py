"""The scheduler of a profile's run: GPUs in parallel, a sequential test per GPU and action, a budget.

Per-GPU actions run on every selected GPU at once, one worker thread per GPU. Each cycle holds the
shared side of the node gate. Node-scope actions (module reload) hold its exclusive side, so they
run only while no per-GPU cycle does. Every result goes to the soak's one journal.

For each GPU and action, a sequential test (``gpusoak.verdict.sprt``) stops the cycling as soon as it
decides; without one, a fixed number of cycles runs. A budget (node time) stops every worker
before its next cycle. Nightly runs rotate through the actions, so a budget cut leaves every
action with some cycles.

On the simulator each worker has its own line of simulated time (``VirtualClock.branch``). The
node's time after a parallel phase is that of its slowest GPU, as it would be on the node.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gpusoak import journal
from gpusoak.actions import ACTIONS, GPU_ACTIONS, NODE_ACTIONS
from gpusoak.model import CycleResult, PciAddress
from gpusoak.soak import Soak
from gpusoak.verdict import refusals
from gpusoak.verdict.sequences import Carried, Sequence
from gpusoak.verdict.sprt import SprtParams


@dataclass(frozen=True)
class Plan:
    actions: tuple[str, ...]
    sequential: SprtParams | None = None  # None: a fixed number of cycles
    cycles: int = 20  # the fixed number (without a sequential test)
    budget_s: float | None = None  # node time for the whole run
    rotate: bool = False  # take the actions in turn instead of one after the other
    parallel: bool = True

    @property
    def gpu_actions(self) -> tuple[str, ...]:
        return tuple(a for a in self.actions if a in GPU_ACTIONS)

    @property
    def node_actions(self) -> tuple[str, ...]:
        return tuple(a for a in self.actions if a in NODE_ACTIONS)

    def max_cycles(self) -> int:
        return self.sequential.cap if self.sequential else self.cycles


@dataclass
class GpuProgress:
    bdf: str
    cycles: int = 0
    failures: int = 0
    action: str = ""
    estimate: str = ""  # the current action's failure estimate and test state
    left_s: float | None = None  # estimated node time left
    done: bool = False

    def line(self) -> str:
        left = "-" if self.left_s is None else _duration(self.left_s)
        state = "done" if self.done else self.action
        return (f"{self.bdf}  {state:<13} cycles {self.cycles:>4}  failures {self.failures:>3}  "
                f"{self.estimate:<34} left {left}")


@dataclass
class Progress:
    """What a long run reports as it goes: per GPU, cycles, failures, estimate, time left."""

    gpus: dict[str, GpuProgress] = field(default_factory=dict)
    node_s: float = 0.0

    def lines(self) -> list[str]:
        return [g.line() for g in self.gpus.values()]


class NodeGate:
    """Shared for per-GPU cycles, exclusive for node-wide actions; a waiting exclusive side
    stops new shared holders so it is not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @property
    def exclusive_waiting(self) -> int:
        """How many are waiting for the exclusive side (a ladder about to reload the driver)."""
        with self._cond:
            return self._waiting

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def upgrade(self) -> Iterator[None]:
        """From a shared hold to the exclusive one and back (a GPU's ladder reloading the driver)."""
        with self._cond:
            self._shared -= 1
            self._cond.notify_all()
        try:
            with self.exclusive():
                yield
        finally:
            with self._cond:
                self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
                self._shared += 1


class Scheduler:
    def __init__(self, soak: Soak, plan: Plan, on_progress: Callable[[Progress], None] | None = None,
                 progress_every_s: float = 5.0, carried: dict[tuple[str, str], Carried] | None = None) -> None:
        self.soak = soak
        self.plan = plan
        self.gate = NodeGate()
        self.sequences: dict[tuple[str, str], Sequence] = {}
        self.progress = Progress({str(b): GpuProgress(str(b)) for b in soak.gpus})
        self._on_progress = on_progress
        self._every = progress_every_s
        self._last_report = 0.0
        self._lock = threading.Lock()
        self.node_seconds = 0.0
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()  # set when the run is told to stop: no new cycle starts
        self.results: list[CycleResult] = []  # every cycle, as the workers journaled them
        soak.gate = self.gate
        soak.parallel = plan.parallel and len(soak.gpus) > 1  # other GPUs' cycles run meanwhile
        self.peer_locks = self._peer_locks()
        for bdf in soak.gpus:
            for a in plan.actions:
                self.sequences[(str(bdf), a)] = Sequence.start(str(bdf), a, plan.sequential,
                                                               (carried or {}).get((str(bdf), a)))

    def _peer_locks(self) -> dict[PciAddress, threading.Lock]:
        """One lock per group of pre-Ampere NVLink peers that gpu_reset resets together, so that
        one GPU's reset never lands in its peer's cycle (and becomes the peer's failure)."""
        if "gpu_reset" not in self.plan.gpu_actions or not self.plan.parallel:
            return {}
        groups: list[set[PciAddress]] = []
        for bdf in self.soak.gpus:
            members = {bdf, *ACTIONS["gpu_reset"].group(self.soak.node, bdf)}
            joined = [g for g in groups if g & members]
            for g in joined:
                groups.remove(g)
                members |= g
            groups.append(members)
        locks: dict[PciAddress, threading.Lock] = {}
        for g in groups:
            if len(g) > 1:
                lock = threading.Lock()
                locks.update(dict.fromkeys(g, lock))
        return locks

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[tuple[str, str], Sequence]:
        clock = self.soak.node.clock
        start = clock.monotonic()
        self._deadline = None if self.plan.budget_s is None else start + self.plan.budget_s
        share = len(self.plan.gpu_actions) / max(1, len(self.plan.actions))
        gpu_deadline = None if self._deadline is None else start + self.plan.budget_s * share
        if self.plan.gpu_actions:
            if self.plan.parallel and len(self.soak.gpus) > 1:
                self._parallel(gpu_deadline)
            else:
                for bdf in self.soak.gpus:
                    self._gpu_worker(bdf, gpu_deadline)
        if self.plan.node_actions and not self.errors:
            with self.gate.exclusive():
                self._node_worker()
        # The last cycle of each GPU: its kernel-log window runs to the end of the run.
        self._charge(self.soak.close_windows())
        for g in self.progress.gpus.values():
            g.done, g.left_s = True, 0.0
        self.node_seconds = clock.monotonic() - start
        self._report(force=True)
        if self.errors:
            raise self.errors[0]
        return self.sequences

    def _parallel(self, deadline: float | None) -> None:
        clock = self.soak.node.clock
        ends: list[float] = []

        # Each worker says it is done by its own event. Thread.join() cannot be trusted once a stop
        # lands in it: on Python 3.11 a KeyboardInterrupt inside join() marks the joined thread as
        # stopped while it still runs (Lib/threading.py, Thread._wait_for_tstate_lock, the
        # bpo-45274 handler releases the live thread's own state lock), after which is_alive() is
        # False and join() returns at once. Event.wait() has no such state to lose.
        finished = {b: threading.Event() for b in self.soak.gpus}

        def work(bdf: PciAddress) -> None:
            try:
                with clock.branch():
                    self._gpu_worker(bdf, deadline)
                    ends.append(clock.monotonic())
            except BaseException as err:  # a bug in gpusoak: stop the run with it, not silently
                self.errors.append(err)
            finally:
                finished[bdf].set()

        def wait_for_every_worker() -> None:
            for done in finished.values():
                done.wait()
            for t in threads:
                t.join()  # each has set its event: only its thread's last steps are left

        threads = [threading.Thread(target=work, args=(b,), name=f"gpusoak {b}", daemon=True) for b in self.soak.gpus]
        try:
            for t in threads:
                t.start()
            wait_for_every_worker()
        except BaseException:
            # A stop (SIGTERM, Ctrl-C) reaches this thread only. The workers finish the cycle they
            # are in (every write and command has its deadline) and start no other; only then may
            # the run put the node back, or a restore would bind a driver under a worker's next reset.
            self.stopping.set()
            for t, done in zip(threads, finished.values(), strict=True):
                if t.ident is not None:  # started (a stop can land between two starts)
                    done.wait()
            raise
        clock.merge(ends)

    def _gpu_worker(self, bdf: PciAddress, deadline: float | None) -> None:
        clock = self.soak.node.clock
        seqs = [self.sequences[(str(bdf), a)] for a in self.plan.gpu_actions]
        started = clock.monotonic()
        while not self.errors and not self.stopping.is_set():
            pending = [s for s in seqs if not s.done(self.plan)]
            if not pending:
                break
            if deadline is not None and clock.monotonic() >= deadline:
                for s in pending:
                    s.stopped = "budget"
                break
            # In turn: the action with the fewest cycles so far (the first of them on a tie).
            seq = min(pending, key=lambda x: x.cycles) if self.plan.rotate else pending[0]
            with self.gate.shared(), self.peer_locks.get(bdf) or contextlib.nullcontext():
                r = self.soak.run_cycle(bdf, seq.action, seq.cycles + 1)
            with self._lock:
                self.results.append(r)
            seq.record(r)
            self._charge(self.soak.take_after_cycle())
            if bdf in self.soak.out_of_service:
                for s in seqs:
                    s.stopped = s.stopped or "out_of_service"
            self._update(bdf, seq, seqs, started, deadline)

    def _node_worker(self) -> None:
        clock = self.soak.node.clock
        for action in self.plan.node_actions:
            seqs = {str(b): self.sequences[(str(b), action)] for b in self.soak.gpus}
            cycle = 0
            while not all(s.done(self.plan) for s in seqs.values()):
                if self._deadline is not None and clock.monotonic() >= self._deadline:
                    for s in seqs.values():
                        s.stopped = s.stopped or "budget"
                    break
                cycle += 1
                for r in self.soak.run_node_cycle(action, cycle):
                    self.results.append(r)
                    s = seqs[r.bdf]
                    if not s.stopped:
                        s.record(r)
                self._charge(self.soak.take_after_cycle())

    def _charge(self, records: list[dict]) -> None:
        """A cycle judged good that its window later proved bad (gpusoak.journal.charge): count it
        as the failure it was, in the results and in its sequence's test."""
        with self._lock:
            for rec in records:
                if not rec.get("charged"):
                    continue
                key = (rec["bdf"], rec["action"], rec["cycle"])
                for i, r in enumerate(self.results):
                    if (r.bdf, r.action, r.cycle) == key:
                        self.results[i] = journal.charged(r, rec)
                        if (seq := self.sequences.get((rec["bdf"], rec["action"]))) is not None:
                            seq.charge(rec["cycle"])
                        break

    # -- progress ----------------------------------------------------------------------------
    def _update(self, bdf: PciAddress, seq: Sequence, seqs: list[Sequence], started: float,
                deadline: float | None) -> None:
        clock = self.soak.node.clock
        g = self.progress.gpus[str(bdf)]
        g.cycles = sum(s.cycles for s in seqs)
        g.failures = sum(s.failures for s in seqs)
        g.action = seq.action
        rate = f"{seq.failures}/{seq.attempts} failed" if seq.attempts else "no attempts"
        g.estimate = f"{seq.action} {rate}" + (f", {seq.test.outcome}" if seq.test and seq.test.decision != "continue" else "")
        now = clock.monotonic()
        per_cycle = (now - started) / max(1, g.cycles)
        cycles_left = 0
        for s in seqs:
            if s.done(self.plan):
                continue
            room = self.plan.max_cycles() - s.cycles - s.carried_counts[0]
            cycles_left += min(s.test.cycles_to_accept(), room) if s.test is not None else room
        left = per_cycle * cycles_left
        if deadline is not None:
            left = min(left, max(0.0, deadline - now))
        g.left_s = left
        g.done = all(s.done(self.plan) for s in seqs)
        self._report()

    def _report(self, force: bool = False) -> None:
        if self._on_progress is None:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_report < self._every:
                return
            self._last_report = now
            self.progress.node_s = self.soak.node.clock.monotonic()
            self._on_progress(self.progress)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def supported_actions(node, gpus: list[PciAddress], ctx, candidates: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The actions that apply to this node: all but those that every selected GPU (or, for a
    node-scope action, the node) refuses for a reason of the hardware or the node's build. An
    action refused for a reason of the moment (a service, a holder) stays in the plan: its cycles
    are refused and reported, and the node cannot be admitted without them. Read-only."""
    def ruled_out(refused: list) -> bool:
        return refusals.rules_out(f.reason for f in refused)

    out = []
    for name in candidates or tuple(ACTIONS):
        action = ACTIONS[name]
        if action.scope == "node":
            if not ruled_out(action.refusals(node, None, ctx)):
                out.append(name)
        elif not gpus or not all(ruled_out(action.refusals(node, b, ctx)) for b in gpus):
            out.append(name)
    return tuple(out)
