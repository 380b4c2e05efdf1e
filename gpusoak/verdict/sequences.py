"""One GPU and action's sequence of cycles, and the sequential test's state over them: what the
scheduler consults to go on or stop, and what the report replays from the journal. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gpusoak.model import FAILED, HUNG, REFUSED, SKIPPED, CycleResult
from gpusoak.verdict import refusals, score
from gpusoak.verdict.sprt import ACCEPT_H0, CONTINUE, Sprt, SprtParams, replay, resume


@dataclass(frozen=True)
class Carried:
    """What one GPU and action takes over from earlier runs."""

    runs: int = 0  # earlier runs with at least one attempt carried
    attempts: int = 0
    failures: int = 0
    since: str | None = None  # started_at of the oldest run carried
    standing: str | None = None  # run_id of the run whose test ended reliable, before the open test
    reason: str = ""  # where the carried evidence begins, in words

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": self.runs, "attempts": self.attempts, "failures": self.failures,
                               "since": self.since}
        if self.standing:
            out["standing"] = self.standing
        out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Carried:
        return cls(runs=int(data.get("runs") or 0), attempts=int(data.get("attempts") or 0),
                   failures=int(data.get("failures") or 0), since=data.get("since"),
                   standing=data.get("standing"), reason=str(data.get("reason") or ""))



class Limits(Protocol):
    """What ``Sequence.done`` asks of a plan: its cycle limit (schedule.Plan has it, and Cap)."""

    def max_cycles(self) -> int: ...


@dataclass(frozen=True)
class Cap:
    """A plan's cycle limit alone (what ``Sequence.done`` asks a plan for)."""

    cycles: int

    def max_cycles(self) -> int:
        return self.cycles


@dataclass
class Sequence:
    """One GPU and action: its cycles so far and, with a sequential test, the test's state.

    ``cycles``, ``attempts`` and ``failures`` are this run's. With evidence carried from earlier
    runs (``gpusoak.carry``), the test starts from the carried attempts and failures, and the cap
    counts them too."""

    bdf: str
    action: str
    test: Sprt | None = None
    cycles: int = 0  # journaled cycles, attempted or not
    attempts: int = 0
    failures: int = 0
    stopped: str = ""  # why cycling stopped: decided, cap, budget, not_applicable, out_of_service
    refusal: str = ""
    history: list[tuple[int, bool]] = field(default_factory=list)  # (cycle, failed) of each attempt, in order
    # Every failure so far was a reset that did not finish, cured by the ladder's first rung: the
    # long-jobs-only kind (score.reliability), which needs its rate bounded, not only detected.
    curable: bool = True
    carried: Carried | None = None  # what the test took over from earlier runs

    @classmethod
    def start(cls, bdf: str, action: str, params: SprtParams | None, carried: Carried | None = None) -> Sequence:
        """A sequence before its first cycle; a sequential test begins where the carried evidence left it."""
        test = None
        if params is not None:
            test = resume(params, carried.attempts, carried.failures) if carried else Sprt(params)
        return cls(bdf, action, test, carried=carried)

    @property
    def carried_counts(self) -> tuple[int, int]:
        return (self.carried.attempts, self.carried.failures) if self.carried else (0, 0)

    def charge(self, cycle: int) -> None:
        """An attempt judged good turned out bad after its cycle (a late fatal event, a failed load):
        count it failed, and replay the sequential test over the corrected history."""
        at = next((i for i, (c, _) in enumerate(self.history) if c == cycle), None)
        if at is None:  # judged inconclusive, so not an attempt until now
            self.attempts += 1
            self.history.append((cycle, False))
            at = len(self.history) - 1
        if self.history[at][1]:
            return
        self.history[at] = (cycle, True)
        self.curable = False  # a fault found after its cycle (a late event, a failed load) is no cured reset
        self.failures += 1
        if self.test is not None:
            self.test = replay(self.test.params, [f for _, f in self.history], self.carried_counts)

    def record(self, r: CycleResult) -> None:
        self.cycles += 1
        if r.attempted:
            self.attempts += 1
            failed = r.outcome in (FAILED, HUNG)
            self.failures += failed
            if failed and not score.cured_at_first_rung(r):
                self.curable = False
            self.history.append((r.cycle, failed))
            if self.test is not None:
                self.test.add(failed)
        elif r.outcome == REFUSED and r.reason == refusals.LOAD_CHARGED:
            pass  # its load failed: the previous cycle's failure, and this action never ran
        elif r.outcome == REFUSED and not self.attempts:
            # The reason that rules the action out, where one does; else the first.
            self.refusal = next((f.reason for f in r.findings if refusals.not_applicable(f.reason)),
                                r.reason or "refused")
        elif r.outcome == SKIPPED and r.reason != refusals.BUS_BUSY:
            self.stopped = "out_of_service"  # a hung write or a GPU nothing brought back

    def done(self, plan: Limits) -> bool:
        if self.stopped:
            return True
        capped = self.cycles + self.carried_counts[0] >= plan.max_cycles()  # carried attempts count toward the cap
        if self.refusal:
            self.stopped = "not_applicable"
        elif self.test is not None and self.test.decision == "unreliable" and self.curable and self.failures \
                and not self.carried_counts[1]:
            # Unreliable for churn, but each failure so far a reset the first rung cured: cycle on
            # until the rate is bounded below or above the long-jobs limit (score.rate_bounded).
            if score.rate_bounded(self.failures, self.attempts):  # this run's cycles, as the verdict counts them
                self.stopped = "bounded"
            elif capped:
                self.stopped = "cap"
        elif self.test is not None and self.test.decision != "continue":
            self.stopped = "decided"
        elif capped:
            self.stopped = "cap"
        return bool(self.stopped)

    @property
    def outcome(self) -> str:
        """reliable / unreliable / undecided (sequential), or passed / failed (fixed); not_applicable
        where the hardware rules the action out, untested where something else refused it."""
        if self.refusal:
            return "not_applicable" if refusals.not_applicable(self.refusal) else "untested"
        if self.test is not None:
            if not self.attempts and self.test.decision == ACCEPT_H0:
                return "undecided"  # carried evidence alone never passes a GPU: it must be tried in this run
            if self.test.decision == CONTINUE and self.carried is not None and self.carried.standing \
                    and self.attempts and not self.failures:
                return ACCEPT_H0  # the earlier test's decision stands: the open one has seen no failure
            return self.test.outcome
        return "failed" if self.failures else ("passed" if self.attempts else "not_applicable")

    def to_dict(self) -> dict:
        out = {"bdf": self.bdf, "action": self.action, "cycles": self.cycles, "attempts": self.attempts,
               "failures": self.failures, "outcome": self.outcome, "stopped": self.stopped or "running"}
        if self.refusal:
            out["refusal"] = self.refusal
        if self.test is not None:
            out["sprt"] = self.test.to_dict()
        if self.carried is not None:
            out["carried"] = self.carried.to_dict()
        return out
