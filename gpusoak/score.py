"""The verdict: success rates with confidence bounds, a class per GPU, a decision per node.

The rules live here and only here (documented in docs/verdict.md):

GPU classes
  ``fail``          at least one attempted cycle of any action failed or hung.
  ``pass``          every attempted cycle recovered, and for every action the Wilson 95 % lower
                    bound of the success rate is at least ``min_lower_bound`` (default 0.80, which
                    takes 16 clean cycles).
  ``inconclusive``  no failure, but too few attempts for the bound (or none: refused, skipped).

Node decision
  ``reboot_required`` a GPU that nothing on the recovery ladder brought back (it needs a reboot).
  ``quarantine``    any GPU is ``fail``.
  ``admit``         every GPU is ``pass``.
  ``retest``        otherwise: nothing failed, but the evidence is too thin to admit.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpusoak.model import FAILED, HUNG, RECOVERED, ActionStats, CycleResult, GpuVerdict, Verdict

Z95 = 1.959963984540054  # two-sided 95 % normal quantile

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
ADMIT, QUARANTINE, RETEST, REBOOT_REQUIRED = "admit", "quarantine", "retest", "reboot_required"
GPU_CLASSES = (PASS, FAIL, INCONCLUSIVE)
DECISIONS = (ADMIT, QUARANTINE, RETEST, REBOOT_REQUIRED)


@dataclass(frozen=True)
class Rules:
    min_lower_bound: float = 0.80


def wilson_lower_bound(successes: int, attempts: int, z: float = Z95) -> float:
    """Lower end of the Wilson score interval for a binomial proportion (0.0 with no attempts)."""
    if attempts <= 0:
        return 0.0
    if not 0 <= successes <= attempts:
        raise ValueError(f"successes {successes} not within 0..{attempts}")
    p = successes / attempts
    z2 = z * z
    centre = p + z2 / (2 * attempts)
    spread = z * math.sqrt(p * (1 - p) / attempts + z2 / (4 * attempts * attempts))
    return max(0.0, (centre - spread) / (1 + z2 / attempts))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def action_stats(results: Iterable[CycleResult]) -> ActionStats:
    attempted = [r for r in results if r.attempted]
    ok = [r.recovery_s for r in attempted if r.outcome == RECOVERED and r.recovery_s is not None]
    successes = sum(1 for r in attempted if r.outcome == RECOVERED)
    return ActionStats(
        attempts=len(attempted),
        successes=successes,
        lower_bound=round(wilson_lower_bound(successes, len(attempted)), 6),
        recovery_p50_s=_r(percentile(ok, 50)),
        recovery_p95_s=_r(percentile(ok, 95)),
        recovery_max_s=_r(max(ok) if ok else None),
    )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def classify_gpu(bdf: str, uuid: str | None, results: Sequence[CycleResult],
                 rules: Rules = Rules()) -> GpuVerdict:
    by_action: dict[str, list[CycleResult]] = defaultdict(list)
    for r in results:
        by_action[r.action].append(r)
    stats = {action: action_stats(rs) for action, rs in sorted(by_action.items())}
    evidence = []
    bad = [r for r in results if r.outcome in (FAILED, HUNG)]
    for action, s in stats.items():
        line = f"{action}: {s.successes}/{s.attempts} recovered, lower bound {s.lower_bound:.3f}"
        reasons = Counter(r.reason for r in bad if r.action == action)
        if reasons:
            line += "; " + ", ".join(f"{why} x{n}" for why, n in reasons.most_common())
        evidence.append(line)
    rungs = Counter(r.recovered_by for r in bad if r.recovered_by)
    evidence += ["needs a reboot: nothing on the recovery ladder brought it back" if rung == REBOOT_REQUIRED
                 else f"recovered by {rung} x{n}" for rung, n in rungs.most_common()]
    not_tried = Counter(r.reason for r in results if not r.attempted)
    evidence += [f"not attempted: {why} x{n}" for why, n in not_tried.most_common()]
    if bad:
        gpu_class = FAIL
    elif stats and all(s.attempts > 0 and s.lower_bound >= rules.min_lower_bound for s in stats.values()):
        gpu_class = PASS
    else:
        gpu_class = INCONCLUSIVE
    return GpuVerdict(bdf, uuid, gpu_class, stats, tuple(evidence))


def decide(hostname: str, gpus: Sequence[GpuVerdict]) -> Verdict:
    failing = [g for g in gpus if g.gpu_class == FAIL]
    thin = [g for g in gpus if g.gpu_class == INCONCLUSIVE]
    dead = [g for g in failing if any(e.startswith("needs a reboot") for e in g.evidence)]
    if dead:
        decision = REBOOT_REQUIRED
        evidence = tuple(f"{g.bdf} needs a reboot: {'; '.join(g.evidence)}" for g in dead) + tuple(
            f"{g.bdf} failed: {'; '.join(g.evidence)}" for g in failing if g not in dead)
    elif failing:
        decision = QUARANTINE
        evidence = tuple(f"{g.bdf} failed: {'; '.join(g.evidence)}" for g in failing)
    elif gpus and not thin:
        decision = ADMIT
        evidence = (f"all {len(gpus)} GPUs recovered from every cycle",)
    else:
        decision = RETEST
        evidence = tuple(f"{g.bdf} inconclusive: {'; '.join(g.evidence) or 'no cycles'}" for g in thin) \
            or ("no GPUs were tested",)
    return Verdict(hostname, decision, tuple(gpus), evidence)


def verdict(hostname: str, gpus: Sequence[tuple[str, str | None]], results: Sequence[CycleResult],
            rules: Rules = Rules()) -> Verdict:
    """The node's verdict from its journal: ``gpus`` lists (bdf, uuid) of every GPU in the run."""
    per_gpu: dict[str, list[CycleResult]] = defaultdict(list)
    for r in results:
        per_gpu[r.bdf].append(r)
    return decide(hostname, [classify_gpu(bdf, uuid, per_gpu.get(bdf, []), rules) for bdf, uuid in gpus])
