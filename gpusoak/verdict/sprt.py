"""Wald's sequential probability ratio test for a reset's failure rate, one per GPU and action.

H0: the failure rate is at most ``p0`` (the GPU is reliable under this action).
H1: the failure rate is at least ``p1`` (it is not).

After each attempted cycle the log-likelihood ratio moves by ``ln(p1/p0)`` for a failure and by
``ln((1-p1)/(1-p0))`` for a recovery. The test accepts H1 once the ratio reaches
``ln((1-beta)/alpha)`` and accepts H0 once it falls to ``ln(beta/(1-alpha))`` (Wald, 1945). Where
neither happens by the cap, the test is undecided and the run says so.

Defaults, and why (docs/verdict.md): ``p1 = 0.02`` is the failure rate we must catch, with
``beta = 0.05`` (95 % power); ``p0 = 0.0005`` (one failed reset in 2,000) is what we accept; ``alpha
= 0.05``. A GPU with no failures is accepted after 150 clean cycles, the least any test can use: 149
clean cycles are needed before a 2 % failure rate is ruled out with 95 % power (0.98^149 < 0.05).
A failure in the first 38 cycles rejects at once; a later one sets the count back by about 188
cycles. Exactly (``operating_characteristic``), with the cap at 300: a GPU failing 2 % of resets
is passed as reliable with probability 0.048; one failing 0.05 % is called unreliable with
probability 0.022 and left undecided with 0.050. tests/test_sprt.py checks these over many
simulated sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTINUE, ACCEPT_H0, ACCEPT_H1 = "continue", "reliable", "unreliable"


@dataclass(frozen=True)
class SprtParams:
    p0: float = 0.0005
    p1: float = 0.02
    alpha: float = 0.05
    beta: float = 0.05
    cap: int = 300  # cycles; undecided at the cap is reported as such

    def __post_init__(self) -> None:
        if not 0 < self.p0 < self.p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1 (got p0={self.p0}, p1={self.p1})")
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"alpha and beta must lie in (0, 0.5) (got {self.alpha}, {self.beta})")
        if self.cap < 1:
            raise ValueError(f"cap must be at least 1 (got {self.cap})")

    @property
    def upper(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    @property
    def step_fail(self) -> float:
        return math.log(self.p1 / self.p0)

    @property
    def step_ok(self) -> float:
        return math.log((1 - self.p1) / (1 - self.p0))

    def describe(self) -> str:
        return (f"SPRT H0: failure rate <= {self.p0:g}, H1: >= {self.p1:g}; alpha {self.alpha:g}, "
                f"beta {self.beta:g}; cap {self.cap} cycles")

    def to_dict(self) -> dict[str, float | int]:
        return {"p0": self.p0, "p1": self.p1, "alpha": self.alpha, "beta": self.beta, "cap": self.cap}


@dataclass
class Sprt:
    """The running test for one GPU and action."""

    params: SprtParams = field(default_factory=SprtParams)
    llr: float = 0.0
    cycles: int = 0
    failures: int = 0
    decision: str = CONTINUE

    def add(self, failed: bool) -> str:
        """Record one attempted cycle; returns the decision so far."""
        if self.decision != CONTINUE:
            return self.decision
        self.cycles += 1
        self.failures += failed
        self.llr += self.params.step_fail if failed else self.params.step_ok
        if self.llr >= self.params.upper:
            self.decision = ACCEPT_H1
        elif self.llr <= self.params.lower:
            self.decision = ACCEPT_H0
        return self.decision

    @property
    def done(self) -> bool:
        return self.decision != CONTINUE or self.cycles >= self.params.cap

    @property
    def outcome(self) -> str:
        """reliable, unreliable, or undecided (stopped at the cap, or before it by a budget)."""
        return self.decision if self.decision != CONTINUE else "undecided"

    def cycles_to_accept(self) -> int:
        """Clean cycles still needed to accept H0 from here (an estimate for progress)."""
        if self.decision != CONTINUE:
            return 0
        return max(0, math.ceil((self.llr - self.params.lower) / -self.params.step_ok))

    def to_dict(self) -> dict:
        return {"test": "sprt", **self.params.to_dict(), "cycles": self.cycles, "failures": self.failures,
                "llr": round(self.llr, 6), "decision": self.outcome}


def resume(params: SprtParams, cycles: int, failures: int) -> Sprt:
    """The test after ``cycles`` attempted cycles of which ``failures`` failed, taken over from
    earlier runs (gpusoak/carry.py). Exact: the ratio after n cycles with k failures is
    k * ln(p1/p0) + (n - k) * ln((1-p1)/(1-p0)) whatever their order, and a test still open after
    them never crossed a bound on the way. Totals that already cross one decide at once."""
    if not 0 <= failures <= cycles:
        raise ValueError(f"failures {failures} not within 0..{cycles}")
    test = Sprt(params, llr=failures * params.step_fail + (cycles - failures) * params.step_ok,
                cycles=cycles, failures=failures)
    if cycles and test.llr >= params.upper:
        test.decision = ACCEPT_H1
    elif cycles and test.llr <= params.lower:
        test.decision = ACCEPT_H0
    return test


def replay(params: SprtParams, failures: list[bool], carried: tuple[int, int] = (0, 0)) -> Sprt:
    """The test's state after a sequence of attempted cycles (in order), started from the
    ``carried`` (cycles, failures) of earlier runs."""
    test = resume(params, *carried)
    for failed in failures:
        if test.done:
            break
        test.add(failed)
    return test


def operating_characteristic(params: SprtParams, rate: float) -> tuple[float, float, float]:
    """Exact probabilities (reliable, unreliable, undecided) for a true failure rate, truncated at
    the cap. The ratio depends only on (cycles, failures), so the states are few."""
    going = {0: 1.0}  # failures so far -> probability of still testing
    accept = reject = 0.0
    for n in range(1, params.cap + 1):
        nxt: dict[int, float] = {}
        for k, pr in going.items():
            for failed, q in ((1, rate), (0, 1.0 - rate)):
                kk = k + failed
                llr = kk * params.step_fail + (n - kk) * params.step_ok
                if llr >= params.upper:
                    reject += pr * q
                elif llr <= params.lower:
                    accept += pr * q
                else:
                    nxt[kk] = nxt.get(kk, 0.0) + pr * q
        going = nxt
    return accept, reject, sum(going.values())
