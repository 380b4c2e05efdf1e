"""The sequential test: its boundaries, its exact error rates, and the same rates measured over
many simulated GPUs (issue 7: the error rates are checked empirically over seeds)."""

import random

import pytest

from gpusoak.verdict.sprt import (
    ACCEPT_H0,
    ACCEPT_H1,
    CONTINUE,
    Sprt,
    SprtParams,
    operating_characteristic,
    replay,
    resume,
)

DEFAULT = SprtParams()


def _run(params: SprtParams, rate: float, seeds: int, seed: int = 2026) -> dict[str, float]:
    rng = random.Random(seed)
    counts = {"reliable": 0, "unreliable": 0, "undecided": 0}
    for _ in range(seeds):
        test = Sprt(params)
        while not test.done:
            test.add(rng.random() < rate)
        counts[test.outcome] += 1
    return {k: v / seeds for k, v in counts.items()}


def test_a_clean_gpu_is_accepted_after_150_cycles_and_a_failure_early_rejects_at_once():
    test = replay(DEFAULT, [False] * 149)
    assert test.decision == "continue" and test.cycles_to_accept() == 1
    assert test.add(False) == ACCEPT_H0 and test.cycles == 150
    assert replay(DEFAULT, [False] * 37 + [True]).decision == ACCEPT_H1
    late = replay(DEFAULT, [False] * 40 + [True])
    assert late.decision == "continue" and late.failures == 1  # a later failure sets the count back


def test_150_clean_cycles_is_the_least_any_test_may_use_for_95_percent_power_at_2_percent():
    # Any rule that passes a GPU after n clean cycles passes a 2 %-failing one with probability
    # at least 0.98^n; 0.98^149 is the first below 0.05.
    assert 0.98 ** 148 > 0.05 > 0.98 ** 149
    accept, _, _ = operating_characteristic(DEFAULT, 0.02)
    assert accept == pytest.approx(0.98 ** 150, rel=1e-9)


def test_exact_error_rates_of_the_defaults():
    accept_h1, reject_h1, undecided_h1 = operating_characteristic(DEFAULT, DEFAULT.p1)
    accept_h0, reject_h0, undecided_h0 = operating_characteristic(DEFAULT, DEFAULT.p0)
    assert accept_h1 <= DEFAULT.beta  # a GPU failing at p1 is passed at most beta of the time
    assert reject_h0 <= DEFAULT.alpha  # a GPU failing at p0 is called unreliable at most alpha
    assert 1 - accept_h1 >= 0.95  # caught (unreliable, or not passed by the cap) with >= 95 % power
    for triple in ((accept_h1, reject_h1, undecided_h1), (accept_h0, reject_h0, undecided_h0)):
        assert sum(triple) == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [DEFAULT.p0, DEFAULT.p1, 0.0, 0.05])
def test_error_rates_measured_over_many_seeds_match_the_exact_ones(rate):
    seeds = 6000
    measured = _run(DEFAULT, rate, seeds)
    exact = dict(zip(("reliable", "unreliable", "undecided"), operating_characteristic(DEFAULT, rate), strict=True))
    for k in measured:
        # four standard errors of a proportion from 6000 draws
        tolerance = 4 * (max(exact[k], 1e-4) * (1 - exact[k]) / seeds) ** 0.5 + 1e-3
        assert abs(measured[k] - exact[k]) <= tolerance, (k, measured, exact)
    if rate == DEFAULT.p0:
        assert measured["unreliable"] <= DEFAULT.alpha
    if rate == DEFAULT.p1:
        assert measured["reliable"] <= DEFAULT.beta + 0.01


@pytest.mark.parametrize("params", [SprtParams(p0=0.01, p1=0.1, alpha=0.1, beta=0.1, cap=500),
                                    SprtParams(p0=0.01, p1=0.05, alpha=0.05, beta=0.1, cap=1000)])
def test_other_parameters_keep_walds_bounds_on_the_error_rates(params):
    # Wald's bounds: alpha' <= alpha / (1 - beta), beta' <= beta / (1 - alpha); measured with a
    # margin of four standard errors over 4000 simulated GPUs.
    seeds = 4000
    margin = 4 * (0.1 * 0.9 / seeds) ** 0.5
    assert _run(params, params.p0, seeds)["unreliable"] <= params.alpha / (1 - params.beta) + margin
    assert _run(params, params.p1, seeds)["reliable"] <= params.beta / (1 - params.alpha) + margin


@pytest.mark.parametrize("bad", [dict(p0=0.02, p1=0.01), dict(alpha=0.6), dict(beta=0), dict(cap=0), dict(p0=0)])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SprtParams(**bad)


def test_the_report_states_the_test():
    test = replay(DEFAULT, [False] * 10)
    d = test.to_dict()
    assert d["test"] == "sprt" and d["cycles"] == 10 and d["decision"] == "undecided"
    assert "H0: failure rate <= 0.0005" in DEFAULT.describe() and "cap 300" in DEFAULT.describe()


def test_a_test_resumed_from_carried_totals_is_the_test_that_saw_those_cycles():
    # Evidence carried over from earlier nights (gpusoak/carry.py) gives totals, not an order: the
    # ratio depends on the totals alone, so an open test resumes exactly.
    cycles = [False] * 60 + [True] + [False] * 30
    seen, resumed = replay(DEFAULT, cycles), resume(DEFAULT, 91, 1)
    assert seen.decision == resumed.decision == CONTINUE
    assert (resumed.cycles, resumed.failures) == (91, 1) and abs(seen.llr - resumed.llr) < 1e-9
    more = [False] * 150
    assert replay(DEFAULT, cycles + more).to_dict() == replay(DEFAULT, more, carried=(91, 1)).to_dict()
    # Totals beyond a bound decide at once; nothing carried is a fresh test.
    assert resume(DEFAULT, 200, 0).decision == ACCEPT_H0 and resume(DEFAULT, 10, 1).decision == ACCEPT_H1
    assert resume(DEFAULT, 0, 0) == Sprt(DEFAULT)
    with pytest.raises(ValueError):
        resume(DEFAULT, 3, 4)
