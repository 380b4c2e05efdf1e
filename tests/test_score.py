import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpusoak.model import CycleResult
from gpusoak.verdict import score


@pytest.mark.parametrize("successes, attempts, expected", [
    # Wilson score interval, z = 1.96: lower = (p + z²/2n - z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    (20, 20, 0.8389),  # n / (n + z²)
    (15, 20, 0.5313),
    (0, 10, 0.0),
    (50, 100, 0.4038),
])
def test_wilson_lower_bound_known_values(successes, attempts, expected):
    assert score.wilson_lower_bound(successes, attempts) == pytest.approx(expected, abs=1e-4)


def test_wilson_edge_cases():
    assert score.wilson_lower_bound(0, 0) == 0.0
    with pytest.raises(ValueError):
        score.wilson_lower_bound(3, 2)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_bound_is_below_the_observed_rate(pair):
    k, n = pair
    lb = score.wilson_lower_bound(k, n)
    assert 0.0 <= lb <= k / n + 1e-12
    if k < n:
        assert lb <= score.wilson_lower_bound(k + 1, n)


def test_percentile_matches_linear_interpolation():
    assert score.percentile([], 50) is None
    assert score.percentile([3.0], 95) == 3.0
    assert score.percentile([1, 2, 3, 4], 50) == 2.5
    assert math.isclose(score.percentile(list(range(1, 101)), 95), 95.05)


def _r(cycle, outcome, bdf="0000:65:00.0", action="flr", recovery=0.5, reason=None):
    from gpusoak.model import Finding
    return CycleResult(run_id="r", bdf=bdf, uuid="GPU-1", action=action, cycle=cycle, outcome=outcome,
                       started_at="", duration_s=recovery, recovery_s=recovery if outcome == "recovered" else None,
                       findings=(Finding(reason, "x"),) if reason else ())


def test_classes_and_decisions():
    clean = [_r(c, "recovered") for c in range(1, 21)]
    g = score.classify_gpu("0000:65:00.0", "GPU-1", clean)
    assert g.gpu_class == score.PASS and g.actions["flr"].attempts == 20
    assert g.actions["flr"].recovery_p50_s == 0.5

    one_bad = clean[:-1] + [_r(20, "failed", reason="flr_not_ready")]
    bad = score.classify_gpu("0000:65:00.0", "GPU-1", one_bad)
    assert bad.gpu_class == score.FAIL and "flr_not_ready x1" in bad.evidence[0]

    hung = score.classify_gpu("0000:65:00.0", "GPU-1", [_r(1, "hung", reason="hung")])
    assert hung.gpu_class == score.FAIL

    few = score.classify_gpu("0000:65:00.0", "GPU-1", clean[:5])  # 5/5: lower bound 0.57 < 0.80
    assert few.gpu_class == score.INCONCLUSIVE
    refused = score.classify_gpu("0000:65:00.0", "GPU-1", [_r(1, "refused", reason="not_root")])
    assert refused.gpu_class == score.INCONCLUSIVE and "not attempted: not_root x1" in refused.evidence

    assert score.decide("n", [g, bad]).decision == score.QUARANTINE
    assert score.decide("n", [g, g]).decision == score.ADMIT
    assert score.decide("n", [g, few]).decision == score.RETEST
    assert score.decide("n", []).decision == score.RETEST


def test_verdict_includes_gpus_without_cycles():
    v = score.verdict("n", [("0000:65:00.0", "GPU-1"), ("0000:66:00.0", None)],
                      [_r(c, "recovered") for c in range(1, 21)])
    assert [g.gpu_class for g in v.gpus] == [score.PASS, score.INCONCLUSIVE]
    assert v.decision == score.RETEST
