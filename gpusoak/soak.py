"""One soak: the node, its GPUs' idle baselines, and one cycle at a time into the journal.

    preconditions -> kernel-log cursor -> action.perform (deadline) -> verify.await_recovery
    -> CycleResult -> journal (fsync'd) -> next cycle
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpusoak import gates as health_gates
from gpusoak import verify
from gpusoak.actions import ACTIONS
from gpusoak.actions.base import NOT_AUTHORISED
from gpusoak.errors import GpusoakError, Hung, UsageError
from gpusoak.gates import GateLimits
from gpusoak.host.node import Node
from gpusoak.host.nvml_events import XidWatch
from gpusoak.journal import Journal
from gpusoak.model import (
    FAILED,
    HUNG,
    RECOVERED,
    REFUSED,
    SKIPPED,
    Check,
    CycleResult,
    Finding,
    KernelEvent,
    PciAddress,
    Snapshot,
)

OUT_OF_SERVICE = "out_of_service"
NOT_HEALTHY_BEFORE = "not_healthy_before_soak"
HEALTH_GATE = "health_gate"
GPUSOAK_ERROR = "gpusoak_error"
RESET_WRITE_FAILED = "reset_write_failed"
RECOVERY_TIMEOUT = "recovery_timeout"


@dataclass(frozen=True)
class SoakOptions:
    cycles: int = 20
    actions: tuple[str, ...] = ("flr",)
    recovery_deadline_s: float = 60.0  # verification polls this long after the action returns
    write_timeout_s: float = 90.0  # FLR alone may legitimately block 65 s before the kernel gives up
    destructive: bool = False  # required on a real node; the simulator needs no opt-in
    gates: GateLimits = field(default_factory=GateLimits)

    def __post_init__(self) -> None:
        if self.cycles < 1:
            raise UsageError("--cycles must be at least 1", cycles=self.cycles)
        unknown = [a for a in self.actions if a not in ACTIONS]
        if unknown:
            raise UsageError(f"unknown action(s) {', '.join(unknown)}; known: {', '.join(ACTIONS)}")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Soak:
    def __init__(self, node: Node, run_id: str, options: SoakOptions, gpus: list[PciAddress]) -> None:
        self.node = node
        self.journal: Journal | None = None
        self.run_id = run_id
        self.options = options
        self.gpus = gpus
        self.baselines: dict[PciAddress, Snapshot] = {}
        self.readings: dict[PciAddress, health_gates.Reading] = {}
        self.gate_results: dict[PciAddress, list[health_gates.Gate]] = {}
        self.out_of_service: dict[PciAddress, str] = {}
        for bdf in gpus:
            self._take_baseline(bdf)

    def _take_baseline(self, bdf: PciAddress) -> None:
        """The idle reading every later cycle is compared with, taken before anything is reset,
        and the health gate: a GPU that fails it is not soaked, and the journal says why."""
        snap = verify.snapshot(self.node, bdf)
        self.baselines[bdf] = snap
        failed = [c for c in verify.compare(snap, snap) if c.status == verify.FAIL]
        if failed:
            self.out_of_service[bdf] = f"{NOT_HEALTHY_BEFORE}: " + "; ".join(c.detail for c in failed)
            return
        reading = self.reading(bdf)
        self.readings[bdf] = reading
        self.gate_results[bdf] = health_gates.evaluate(reading, None, self.options.gates)
        refused = [g for g in self.gate_results[bdf] if g.status == health_gates.FAIL]
        if refused:
            self.out_of_service[bdf] = f"{HEALTH_GATE}: " + "; ".join(f"{g.name}: {g.detail}" for g in refused)

    def reading(self, bdf: PciAddress) -> health_gates.Reading:
        node = self.node
        health = None
        if node.nvml is not None:
            try:
                health = node.nvml.health(bdf)
            except GpusoakError:
                health = None
        aer = node.sysfs.function(bdf).aer("correctable") if node.sysfs.function(bdf).present else None
        return health_gates.Reading(node.clock.monotonic(), health, None if aer is None else aer.total)

    @property
    def allowed(self) -> bool:
        return self.node.simulated or self.options.destructive

    def start(self, journal_path: Path) -> None:
        """Open the journal; its header records the node and the baselines before any reset."""
        self.journal = Journal(journal_path, self.header())

    def run_cycle(self, bdf: PciAddress, action_name: str, cycle: int) -> CycleResult:
        if self.journal is None:
            raise RuntimeError("Soak.start() opens the journal before the first cycle")
        try:
            result = self._cycle(bdf, action_name, cycle)
        except Exception as err:
            # A bug in gpusoak is not the GPU's fault: journal the cycle as not judged, then raise.
            self.journal.append(CycleResult(
                run_id=self.run_id, bdf=str(bdf), uuid=self.baselines[bdf].uuid, action=action_name,
                cycle=cycle, outcome=SKIPPED, started_at=_now_iso(), duration_s=0.0,
                findings=(Finding(GPUSOAK_ERROR, f"{type(err).__name__}: {err}"),)))
            raise
        self.journal.append(result)
        return result

    def _cycle(self, bdf: PciAddress, action_name: str, cycle: int) -> CycleResult:
        action = ACTIONS[action_name]
        base = dict(run_id=self.run_id, bdf=str(bdf), uuid=self.baselines[bdf].uuid, action=action_name,
                    cycle=cycle, started_at=_now_iso())
        if bdf in self.out_of_service:
            why = self.out_of_service[bdf]
            reason = why.split(":", 1)[0]
            return CycleResult(outcome=SKIPPED, duration_s=0.0, findings=(Finding(reason, why),), **base)
        if not self.allowed:
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=(Finding(
                NOT_AUTHORISED, "a real node is only reset with --destructive (or GPUSOAK_DESTRUCTIVE=1); "
                "this run is read-only"),), **base)
        refusals = action.refusals(self.node, bdf)
        if refusals:
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=tuple(refusals), **base)
        return self._attempt(bdf, action, cycle, base)

    def _attempt(self, bdf: PciAddress, action, cycle: int, base: dict) -> CycleResult:
        clock = self.node.clock
        cursor = self.node.kmsg.cursor()
        watch = XidWatch(self.node.nvml, bdf) if self.node.nvml is not None else None
        start = clock.monotonic()
        write_error: GpusoakError | None = None
        try:
            try:
                action.perform(self.node, bdf, timeout_s=self.options.write_timeout_s)
            except Hung as err:
                self.out_of_service[bdf] = f"{OUT_OF_SERVICE}: a write hung in cycle {cycle}: {err}"
                events = verify.device_events(self.node, bdf, cursor)
                return CycleResult(outcome=HUNG, duration_s=clock.monotonic() - start,
                                   findings=(Finding("hung", str(err)),), events=tuple(events), **base)
            except GpusoakError as err:
                write_error = err
            poll = verify.await_recovery(self.node, bdf, self.baselines[bdf], cursor,
                                         self.options.recovery_deadline_s)
            nvml_events = tuple(watch.drain()) if watch is not None else ()
        finally:
            if watch is not None:
                watch.close()
        gate_checks = self._gate_checks(bdf) if poll.recovered else ()
        checks = poll.checks + gate_checks
        events = poll.events + nvml_events
        duration = clock.monotonic() - start
        fatal_nvml = [e for e in nvml_events if verify.is_fatal(e)]
        if poll.recovered and write_error is None and not fatal_nvml \
                and all(c.status != verify.FAIL for c in gate_checks):
            return CycleResult(outcome=RECOVERED, duration_s=duration, recovery_s=poll.at_s - start,
                               checks=checks, events=events, **base)
        findings = _findings(poll, write_error, fatal_nvml, gate_checks)
        return CycleResult(outcome=FAILED, duration_s=duration, findings=tuple(findings),
                           checks=checks, events=events, **base)

    def _gate_checks(self, bdf: PciAddress) -> tuple[Check, ...]:
        """The health gate after a cycle: static limits, and rates since the soak began."""
        results = health_gates.evaluate(self.reading(bdf), self.readings.get(bdf), self.options.gates)
        status = {health_gates.FAIL: verify.FAIL, health_gates.SKIP: verify.SKIP}
        return tuple(Check(f"gate_{g.name}", status.get(g.status, verify.PASS),
                           f"warning: {g.detail}" if g.status == health_gates.WARN else g.detail) for g in results)

    def header(self) -> dict:
        node = self.node
        return {
            "run_id": self.run_id,
            "started_at": _now_iso(),
            "backend": node.backend,
            "hostname": node.hostname,
            "kernel": node.kernel,
            "driver": node.driver_version(),
            "nvml": "available" if node.nvml is not None else f"unavailable: {node.nvml_unavailable}",
            "options": asdict(self.options),
            "gpus": [{"bdf": str(b), "uuid": self.baselines[b].uuid,
                      "baseline": asdict(self.baselines[b]),
                      "out_of_service": self.out_of_service.get(b),
                      "health_gate": [asdict(g) for g in self.gate_results.get(b, [])]} for b in self.gpus],
        }


def _findings(poll: verify.Poll, write_error: GpusoakError | None, fatal_nvml: list[KernelEvent],
              gate_checks: tuple[Check, ...]) -> list[Finding]:
    """Named reasons, most specific first: fatal kernel events (log, then NVML), the write's error,
    failed checks, failed gates. One finding per reason: two sources of one XID are one reason."""
    out = [Finding(verify.event_reason(e), e.text) for e in [*poll.fatal, *fatal_nvml]]
    if write_error is not None:
        out.append(Finding(RESET_WRITE_FAILED, str(write_error)))
    out += [Finding(c.name, c.detail) for c in (*poll.checks, *gate_checks) if c.status == verify.FAIL]
    if not poll.fatal and not poll.recovered:
        out.append(Finding(RECOVERY_TIMEOUT, "checks still failing at the deadline"))
    seen: set[str] = set()
    unique = [f for f in out if not (f.reason in seen or seen.add(f.reason))]
    return unique or [Finding(FAILED, "did not recover")]
