"""One soak: the node, its GPUs' idle baselines, and one cycle at a time into the journal.

    preconditions -> kernel-log cursor -> action.perform (deadline) -> verify.await_recovery
    -> CycleResult -> journal (fsync'd) -> next cycle
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from gpusoak import verify
from gpusoak.actions import ACTIONS
from gpusoak.actions.base import NOT_AUTHORISED
from gpusoak.errors import GpusoakError, Hung, UsageError
from gpusoak.host.node import Node
from gpusoak.journal import Journal
from gpusoak.model import (
    FAILED,
    HUNG,
    RECOVERED,
    REFUSED,
    SKIPPED,
    CycleResult,
    Finding,
    PciAddress,
    Snapshot,
)

OUT_OF_SERVICE = "out_of_service"
NOT_HEALTHY_BEFORE = "not_healthy_before_soak"
RESET_WRITE_FAILED = "reset_write_failed"
RECOVERY_TIMEOUT = "recovery_timeout"


@dataclass(frozen=True)
class SoakOptions:
    cycles: int = 20
    actions: tuple[str, ...] = ("flr",)
    recovery_deadline_s: float = 60.0  # verification polls this long after the action returns
    write_timeout_s: float = 90.0  # FLR alone may legitimately block 65 s before the kernel gives up
    destructive: bool = False  # required on a real node; the simulator needs no opt-in

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
        self.out_of_service: dict[PciAddress, str] = {}
        for bdf in gpus:
            self._take_baseline(bdf)

    def _take_baseline(self, bdf: PciAddress) -> None:
        """The idle reading every later cycle is compared with, taken before anything is reset."""
        snap = verify.snapshot(self.node, bdf)
        self.baselines[bdf] = snap
        failed = [c for c in verify.compare(snap, snap) if c.status == verify.FAIL]
        if failed:
            self.out_of_service[bdf] = f"{NOT_HEALTHY_BEFORE}: " + "; ".join(c.detail for c in failed)

    @property
    def allowed(self) -> bool:
        return self.node.simulated or self.options.destructive

    def start(self, journal_path: Path) -> None:
        """Open the journal; its header records the node and the baselines before any reset."""
        self.journal = Journal(journal_path, self.header())

    def run_cycle(self, bdf: PciAddress, action_name: str, cycle: int) -> CycleResult:
        if self.journal is None:
            raise RuntimeError("Soak.start() opens the journal before the first cycle")
        result = self._cycle(bdf, action_name, cycle)
        self.journal.append(result)
        return result

    def _cycle(self, bdf: PciAddress, action_name: str, cycle: int) -> CycleResult:
        action = ACTIONS[action_name]
        baseline = self.baselines[bdf]
        base = dict(run_id=self.run_id, bdf=str(bdf), uuid=baseline.uuid, action=action_name,
                    cycle=cycle, started_at=_now_iso())
        if bdf in self.out_of_service:
            why = self.out_of_service[bdf]
            reason = why.split(":", 1)[0] if why.startswith(NOT_HEALTHY_BEFORE) else OUT_OF_SERVICE
            return CycleResult(outcome=SKIPPED, duration_s=0.0, findings=(Finding(reason, why),), **base)
        if not self.allowed:
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=(Finding(
                NOT_AUTHORISED, "a real node is only reset with --destructive (or GPUSOAK_DESTRUCTIVE=1); "
                "this run is read-only"),), **base)
        refusals = action.refusals(self.node, bdf)
        if refusals:
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=tuple(refusals), **base)

        clock = self.node.clock
        cursor = self.node.kmsg.cursor()
        start = clock.monotonic()
        write_error: GpusoakError | None = None
        try:
            action.perform(self.node, bdf, timeout_s=self.options.write_timeout_s)
        except Hung as err:
            self.out_of_service[bdf] = f"{OUT_OF_SERVICE}: a write hung in cycle {cycle}: {err}"
            events = verify.device_events(self.node, bdf, cursor)
            return CycleResult(outcome=HUNG, duration_s=clock.monotonic() - start,
                               findings=(Finding("hung", str(err)),), events=tuple(events), **base)
        except GpusoakError as err:
            write_error = err
        poll = verify.await_recovery(self.node, bdf, baseline, cursor, self.options.recovery_deadline_s)
        duration = clock.monotonic() - start
        if poll.recovered and write_error is None:
            return CycleResult(outcome=RECOVERED, duration_s=duration, recovery_s=poll.at_s - start,
                               checks=poll.checks, events=poll.events, **base)
        return CycleResult(outcome=FAILED, duration_s=duration, findings=tuple(_findings(poll, write_error)),
                           checks=poll.checks, events=poll.events, **base)

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
                      "out_of_service": self.out_of_service.get(b)} for b in self.gpus],
        }


def _findings(poll: verify.Poll, write_error: GpusoakError | None) -> list[Finding]:
    """Named reasons, most specific first: fatal kernel events, the write's error, failed checks."""
    out = [Finding(verify.event_reason(e), e.text) for e in poll.fatal]
    if write_error is not None:
        out.append(Finding(RESET_WRITE_FAILED, str(write_error)))
    out += [Finding(c.name, c.detail) for c in poll.checks if c.status == verify.FAIL]
    if not poll.fatal and not poll.recovered:
        out.append(Finding(RECOVERY_TIMEOUT, "checks still failing at the deadline"))
    return out or [Finding(FAILED, "did not recover")]
