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

With a profile, the reliability classes (``reliability``) decide instead (``CLASS_DECISION``); a
node whose worst GPU is long-jobs-only gets ``admit_long_jobs_only``, never a plain ``admit``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpusoak.load.protocol import LoadSummary
from gpusoak.model import (
    FAILED,
    HUNG,
    INDEX_CHANGED,
    MINOR_CHANGED,
    RECOVERED,
    REFUSED,
    ActionStats,
    Check,
    CycleResult,
    GpuVerdict,
    Verdict,
)
from gpusoak.model import INCONCLUSIVE as INCONCLUSIVE_CYCLE
from gpusoak.verdict import events, refusals

Z95 = 1.959963984540054  # two-sided 95 % normal quantile

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
ADMIT, QUARANTINE, RETEST, REBOOT_REQUIRED = "admit", "quarantine", "retest", "reboot_required"
ADMIT_LONG_JOBS_ONLY = "admit_long_jobs_only"  # a profile's decision for a long-jobs-only node (CLASS_DECISION)
GPU_CLASSES = (PASS, FAIL, INCONCLUSIVE)
SUBSET = "subset"  # nothing failed, but not every GPU on the bus was tested (gpusoak/verdict/inventory.py)
DECISIONS = (ADMIT, ADMIT_LONG_JOBS_ONLY, QUARANTINE, RETEST, REBOOT_REQUIRED, SUBSET)


@dataclass(frozen=True)
class Rules:
    min_lower_bound: float = 0.80
    # long-jobs-only needs the failure rate of each action that failed bounded below this: its
    # Wilson 95 % upper bound (docs/verdict.md says why 10 %, and the cycles that takes).
    max_failure_upper: float = 0.10


def _wilson(count: int, attempts: int, z: float) -> tuple[float, float]:
    """The Wilson score interval (centre - spread, centre + spread) of count/attempts, unclipped."""
    if not 0 <= count <= attempts:
        raise ValueError(f"count {count} not within 0..{attempts}")
    p = count / attempts
    z2 = z * z
    centre = p + z2 / (2 * attempts)
    spread = z * math.sqrt(p * (1 - p) / attempts + z2 / (4 * attempts * attempts))
    return (centre - spread) / (1 + z2 / attempts), (centre + spread) / (1 + z2 / attempts)


def wilson_lower_bound(successes: int, attempts: int, z: float = Z95) -> float:
    """Lower end of the Wilson score interval for a binomial proportion (0.0 with no attempts)."""
    return 0.0 if attempts <= 0 else max(0.0, _wilson(successes, attempts, z)[0])


def wilson_upper_bound(count: int, attempts: int, z: float = Z95) -> float:
    """Upper end of the Wilson score interval for the proportion count/attempts (1.0 with no
    attempts): how high a failure rate the cycles cannot rule out."""
    return 1.0 if attempts <= 0 else min(1.0, _wilson(count, attempts, z)[1])


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
    moved = Counter(f.reason for r in results if r.outcome == RECOVERED for f in r.findings
                    if f.reason in (MINOR_CHANGED, INDEX_CHANGED))
    evidence += [f"{why.replace('_', ' ')} in {n} recovered cycle(s)" for why, n in sorted(moved.items())]
    blind = [r for r in results if r.outcome == INCONCLUSIVE_CYCLE]
    if blind:
        evidence.append(f"{len(blind)} cycle(s) a check could not look at: {blind[0].reason}")
    # An action refused on every cycle for a reason of the hardware or the node's build does not
    # apply: it neither passes nor holds the GPU back. Any other refusal leaves its evidence missing
    # (gpusoak/verdict/refusals.py, one table for every reason).
    judged = {a: s for a, s in stats.items()
              if not all(r.outcome == REFUSED and refusals.rules_out(f.reason for f in r.findings)
                         for r in by_action[a])}
    if bad:
        gpu_class = FAIL
    elif blind:
        gpu_class = INCONCLUSIVE  # what could not be looked at has not passed
    elif judged and all(s.attempts > 0 and s.lower_bound >= rules.min_lower_bound for s in judged.values()):
        gpu_class = PASS
    else:
        gpu_class = INCONCLUSIVE
    return GpuVerdict(bdf, uuid, gpu_class, stats, tuple(evidence),
                      needs_reboot=any(r.recovered_by == REBOOT_REQUIRED for r in bad))


def decide(hostname: str, gpus: Sequence[GpuVerdict]) -> Verdict:
    failing = [g for g in gpus if g.gpu_class == FAIL]
    thin = [g for g in gpus if g.gpu_class == INCONCLUSIVE]
    dead = [g for g in failing if g.needs_reboot]
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


# -- reliability classes (issue 7) ----------------------------------------------------------------
# One table (docs/verdict.md): the class, what puts a GPU in it, the node decision it leads to.
CHURN_SAFE, LONG_JOBS_ONLY, QUARANTINE_CLASS = "churn-safe", "long-jobs-only", "quarantine"
REBOOT_CLASS, HARDWARE, UNPROVEN = "reboot-required", "hardware-investigation", "inconclusive"
RELIABILITY_CLASSES = (CHURN_SAFE, LONG_JOBS_ONLY, UNPROVEN, QUARANTINE_CLASS, HARDWARE, REBOOT_CLASS)  # best first
KEEP_QUARANTINED = "keep_quarantined"
# A long-jobs-only GPU is admitted with its label, never as a plain admit: its resets fail now and
# then, so the churn that resets GPUs (vfio-pci resets a function on every open and release,
# drivers/vfio/pci/vfio_pci_core.c vfio_pci_core_enable / vfio_pci_dev_set_try_reset; remediation
# by "nvidia-smi -r", which NVIDIA's NVSentinel falls back from to a reboot when the reset fails,
# NVIDIA/NVSentinel#1240) must be kept away from it.
CLASS_DECISION = {CHURN_SAFE: ADMIT, LONG_JOBS_ONLY: ADMIT_LONG_JOBS_ONLY, UNPROVEN: RETEST,
                  QUARANTINE_CLASS: QUARANTINE, HARDWARE: QUARANTINE, REBOOT_CLASS: REBOOT_REQUIRED}
FIRST_RUNG = "flr"  # ladder.RUNGS[0]
ROW_REMAP_FAILURE = "gate_row_remap_failure"  # the health gate's (verdict/gates.py) check and finding
SUSPECT_EVENTS = {"msix_failed": "MSI-X failure", "fell_off_bus": "fell off the bus"}
# The one fatal event (events.FATAL_KINDS) that says only that a reset did not finish in time:
# after an FLR, drivers/pci/pci.c pcie_flr -> pci_dev_wait polls the function's Command register
# while its reads complete as all-ones (the device asks for more time with Request Retry Status),
# and after PCIE_RESET_READY_POLL_MS (60 s: "the spec does not provide an upper limit, but 60 sec
# ought to be enough") logs "not ready %dms after FLR; giving up" and returns -ENOTTY. The limit is
# a judgement ("varies depending on the platform and the reliability of its set of devices", linux-
# pci, "PCI: Make PCIE_RESET_READY_POLL_MS configurable", Feb 2020). Whether a further reset brings
# such a function back is what the ladder's first rung, an FLR again, finds out [I: that it can is
# the field's experience, the flaky-flr profile's model]. nvidia-smi's documentation: a GPU reset
# "is not guaranteed to work in all cases", and "it is recommended that the health of each reset
# GPU be verified before further use": hence the load checks around each such failure.
RESET_PATH_EVENTS = frozenset({"flr_not_ready"})
# What follows from it in the same cycle: nvidia bound back to a function that does not answer
# cannot initialise it (RmInitAdapter failed) [I: the simulator's model of that bind; on a real node
# NVRM may log the probe-time "fallen off the bus" lines instead, which stay hardware-investigation].
AFTER_NOT_READY = frozenset({"rminit_failed"})


@dataclass(frozen=True)
class _Evidence:
    """What every reliability rule reads: a GPU's cycles, in the order they ran."""
    results: Sequence[CycleResult]
    outcomes: dict[str, str] | None  # each action's sequential-test outcome, where the run had one
    before: str | None  # the GPU's class in the run before this one (a readmission)
    rules: Rules

    @property
    def bad(self) -> list[CycleResult]:
        return [r for r in self.results if r.outcome in (FAILED, HUNG)]


def _needs_reboot(ev: _Evidence) -> tuple[str, ...]:
    return ("nothing on the recovery ladder brought it back",) if any(
        r.recovered_by == REBOOT_REQUIRED for r in ev.bad) else ()


def _hardware_fault(ev: _Evidence) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_hardware(ev.results, ev.bad, ev.before)))


def _quarantine(ev: _Evidence) -> tuple[str, ...]:
    serious = _serious(ev.results) + _too_often(ev.results, ev.bad, ev.rules)
    gated = [r for r in ev.results if r.reason == "health_gate"]
    if gated:
        serious.append(f"failed the health gate: {gated[0].findings[0].detail}")
    return tuple(dict.fromkeys(serious))


def _could_not_look(ev: _Evidence) -> tuple[str, ...]:
    """What could not be looked at has not passed: a cycle a check could not look at, or a failure
    the first rung cured with no load check around it."""
    blind = [r for r in ev.results if r.outcome == INCONCLUSIVE_CYCLE]
    if not ev.bad and blind:
        return (f"{len(blind)} cycle(s) a check could not look at ({blind[0].reason}): "
                "what could not be looked at has not passed",)
    return tuple(_unchecked(ev.results) + _unbounded(ev.results, ev.bad, ev.rules)) if ev.bad else ()


def _for_long_jobs(ev: _Evidence) -> tuple[str, ...]:
    return _long_jobs(ev.results, ev.bad) if ev.bad else ()


def _churn_safe(ev: _Evidence) -> tuple[str, ...]:
    if ev.outcomes is not None:
        applicable = {a: o for a, o in ev.outcomes.items() if o != "not_applicable"}
        if applicable and all(o == "reliable" for o in applicable.values()):
            return tuple(f"{a}: reliable by the sequential test" for a in sorted(applicable))
        return ()
    # Without a sequential test, as classify_gpu: an action refused on every cycle for a reason of
    # the hardware or the build does not apply (gpusoak/verdict/refusals.py).
    applicable = sorted(a for a in {r.action for r in ev.results}
                        if not all(r.outcome == REFUSED and refusals.rules_out(f.reason for f in r.findings)
                                   for r in ev.results if r.action == a))
    stats = [action_stats([r for r in ev.results if r.action == a]) for a in applicable]
    if stats and all(s.attempts > 0 and s.lower_bound >= ev.rules.min_lower_bound for s in stats):
        return (f"every action recovered every time, lower bound >= {ev.rules.min_lower_bound}",)
    return ()


# The reliability classes as one ordered rule table: tried from the top, the first rule that gives
# reasons decides (docs/verdict.md lists the classes in this order; a test holds them together).
RELIABILITY_RULES = (
    (REBOOT_CLASS, _needs_reboot),
    (HARDWARE, _hardware_fault),
    (QUARANTINE_CLASS, _quarantine),
    (UNPROVEN, _could_not_look),
    (LONG_JOBS_ONLY, _for_long_jobs),
    (CHURN_SAFE, _churn_safe),
)


def reliability(results: Sequence[CycleResult], outcomes: dict[str, str] | None = None,
                before: str | None = None, rules: Rules = Rules()) -> tuple[str, tuple[str, ...]]:
    """A GPU's reliability class and why, from its cycles (in the order they ran).

    ``outcomes``: each action's sequential-test outcome (reliable, unreliable, undecided,
    not_applicable), where the run had one. ``before``: the GPU's class in the run before this one
    (a readmission after a reboot), to tell a fault that recurs after a reboot. No rule matching:
    no failure, but not shown reliable (inconclusive).
    """
    ev = _Evidence(results, outcomes, before, rules)
    for cls, rule in RELIABILITY_RULES:
        if why := rule(ev):
            return cls, why
    if outcomes is not None:
        applicable = {a: o for a, o in outcomes.items() if o != "not_applicable"}
        undecided = sorted(a for a, o in applicable.items() if o != "reliable")
        return UNPROVEN, (f"no failures, but not yet shown reliable: {', '.join(undecided) or 'no action applies'}",)
    return UNPROVEN, ("no failures, but too few cycles to say",)


def _hardware(results: Sequence[CycleResult], bad: list[CycleResult], before: str | None) -> list[str]:
    hardware: list[str] = []
    for r in results:
        for e in r.events:
            if e.kind == "xid" and e.xid == 79:
                hardware.append(f"XID 79 in {r.action} cycle {r.cycle}")
            elif e.kind in SUSPECT_EVENTS:
                hardware.append(f"{SUSPECT_EVENTS[e.kind]} in {r.action} cycle {r.cycle}")
        for c in r.checks:
            if c.name in ("link_width", "link_speed") and c.status == "fail" and _degraded(c):
                hardware.append(f"link degraded after {r.action} cycle {r.cycle}: {c.detail}")
            if c.name == ROW_REMAP_FAILURE and c.status == "fail":
                hardware.append(f"row remap failure: {c.detail}")
        if r.reason == "health_gate" and any(f.reason == ROW_REMAP_FAILURE for f in r.findings):
            hardware.append("row remap failure at the baseline gate")
    if bad and before in (QUARANTINE_CLASS, HARDWARE, REBOOT_CLASS):
        hardware.append(f"fails again after a reboot (it was {before})")
    return hardware


def _serious(results: Sequence[CycleResult]) -> list[str]:
    """Each failure that is more than a reset that did not finish (quarantine whatever the rate)."""
    out = []
    for i, r in enumerate(results):
        if r.outcome not in (FAILED, HUNG):
            continue
        where = f"{r.action} cycle {r.cycle}"
        after = _around(results, i)[1]
        if r.outcome == HUNG:
            out.append(f"{where} hung")
        elif r.recovered_by is not None and r.recovered_by != FIRST_RUNG:
            out.append(f"{where}: {r.reason}; only {r.recovered_by} brought it back")
        elif r.recovered_by is None:
            out.append(f"{where}: {r.reason}")  # no ladder judged it (none ran, or the failure came late)
        elif beyond := _beyond_reset_path(r):
            out.append(f"{where}: fatal event {beyond}")
        elif not _did_not_finish(r):
            # The field's long-jobs GPU is one whose reset did not finish ("giving up"); a GPU that
            # came back and dropped again, that NVML calls lost, or that never rebound is not it.
            out.append(f"{where}: {r.reason}, not a reset that did not finish, though {FIRST_RUNG} brought it back")
        elif any(f.reason.startswith(("gate_", "post_check", "load")) for f in r.findings):
            out.append(f"{where}: {r.reason}")
        elif after is not None and (wrong := _gpu_fault(after)):
            # The GPU came back and then computed wrong: not a reset that merely did not finish.
            out.append(f"{where}: the load check after {FIRST_RUNG} brought it back failed ({wrong})")
    return out


def cured_at_first_rung(r: CycleResult) -> bool:
    """A failed cycle of the long-jobs-only kind: a reset that did not finish, brought back by the
    ladder's first rung, with no other fatal event (its load checks are judged at the end)."""
    return r.outcome == FAILED and r.recovered_by == FIRST_RUNG and _did_not_finish(r) and not _beyond_reset_path(r)


def _did_not_finish(r: CycleResult) -> bool:
    """The cycle's reset did not finish: the kernel's "not ready ...; giving up" is among its findings."""
    return any(f.reason in RESET_PATH_EVENTS for f in r.findings)


def rate_bounded(failures: int, attempts: int, rules: Rules = Rules()) -> bool:
    """Whether ``attempts`` cycles with ``failures`` settle the long-jobs question: the failure
    rate's Wilson 95 % interval lies wholly below ``max_failure_upper`` (long jobs may have it), or
    wholly at or above it (quarantine)."""
    if attempts <= 0:
        return False
    return (wilson_upper_bound(failures, attempts) < rules.max_failure_upper
            or wilson_lower_bound(failures, attempts) >= rules.max_failure_upper)


def _beyond_reset_path(r: CycleResult) -> str:
    """The cycle's fatal events other than an FLR that did not finish and what follows from it."""
    fatal = [f.reason for f in r.findings if events.is_fatal_reason(f.reason)]
    allowed = RESET_PATH_EVENTS | (AFTER_NOT_READY if RESET_PATH_EVENTS & set(fatal) else frozenset())
    return ", ".join(dict.fromkeys(x for x in fatal if x not in allowed))


def _too_often(results: Sequence[CycleResult], bad: list[CycleResult], rules: Rules) -> list[str]:
    """Actions whose failure rate is surely at or above ``rules.max_failure_upper`` (its Wilson 95 %
    lower bound is): a GPU that fails that often is not admitted even for long jobs, however its
    retries went."""
    out = []
    for action, failed, attempts, _ in _rates(results, bad):
        if (low := wilson_lower_bound(failed, attempts)) >= rules.max_failure_upper:
            out.append(f"{action}: {failed} of {attempts} attempted cycles failed; the failure rate is at least "
                       f"{low:.1%} (Wilson 95 % lower bound), not below {rules.max_failure_upper:.0%}")
    return out


def _unbounded(results: Sequence[CycleResult], bad: list[CycleResult], rules: Rules) -> list[str]:
    """Actions whose failure rate the cycles can bound neither below nor above the long-jobs limit:
    too few cycles to say (more would; the sequence cycles on for it where it can)."""
    return [f"{action}: {failed} of {attempts} attempted cycles failed; the failure rate may be up to {upper:.1%} "
            f"(Wilson 95 % upper bound): too few cycles to bound it below {rules.max_failure_upper:.0%}"
            for action, failed, attempts, upper in _rates(results, bad) if upper >= rules.max_failure_upper]


def _rates(results: Sequence[CycleResult], bad: list[CycleResult]) -> list[tuple[str, int, int, float]]:
    """(action, failed, attempted, Wilson upper bound of the failure rate) per action that failed."""
    out = []
    for action in sorted({r.action for r in bad}):
        attempted = [r for r in results if r.action == action and r.attempted]
        failed = sum(1 for r in attempted if r.outcome in (FAILED, HUNG))
        out.append((action, failed, len(attempted), wilson_upper_bound(failed, len(attempted))))
    return out


def _unchecked(results: Sequence[CycleResult]) -> list[str]:
    """Failures the first rung cured with no clean load check right before the reset or right after
    the cure: whether the GPU runs clean was not looked at (no load asked for, or gpusoak's own
    child could not run), so long-jobs-only is not shown."""
    out = []
    for i, r in enumerate(results):
        if r.outcome != FAILED:
            continue
        sides = ("before the reset", f"after {FIRST_RUNG} brought it back")
        for side, summary in zip(sides, _around(results, i), strict=True):
            why = "none ran" if summary is None else _tool_fault(summary)
            if why:
                out.append(f"{r.action} cycle {r.cycle} failed and {FIRST_RUNG} brought it back, but no load checked it "
                           f"{side} ({why}): long-jobs-only is not shown (run with a load or a post-check)")
    return out


def _around(results: Sequence[CycleResult], i: int) -> tuple[dict | None, dict | None]:
    """The load checks nearest results[i]'s reset: the last one before it (its own load, else an
    earlier cycle's load or post-check) and the first one after the rung that cured it (its own
    post-check, which the ladder runs, else a later cycle's load or post-check)."""
    before = after = None
    for j, r in enumerate(results):
        for phase, summary in ((0, r.load), (1, r.post_check)):
            if summary is None:
                continue
            if (j, phase) < (i, 1):
                before = summary
            elif after is None:
                after = summary
    return before, after


def _gpu_fault(summary: dict) -> str:
    """What a load check found wrong with the GPU (a wrong result, a GPU error); "" if nothing."""
    s = LoadSummary.from_dict(summary)
    return "" if s.ok or s.tool_error else s.reason("load_check")


def _tool_fault(summary: dict) -> str:
    """Why gpusoak's own load child could not look (no UUID, a crash, no cupy); "" if it looked."""
    s = LoadSummary.from_dict(summary)
    return s.reason("load_check") if s.tool_error else ""


def _long_jobs(results: Sequence[CycleResult], bad: list[CycleResult]) -> tuple[str, ...]:
    return tuple(f"{action}: {failed} of {attempts} attempted cycles failed, each brought back by {FIRST_RUNG} with "
                 f"clean load checks before and after; the failure rate is below {upper:.1%} (Wilson 95 % upper "
                 "bound): fine for long jobs, not for churn" for action, failed, attempts, upper in _rates(results, bad))


def worst(classes: Iterable[str]) -> str:
    ranked = [RELIABILITY_CLASSES.index(c) for c in classes]
    return RELIABILITY_CLASSES[max(ranked)] if ranked else UNPROVEN


def _degraded(check: Check) -> bool:
    """A link that came back narrower or slower; not one that reads as gone (all-ones config
    space decodes to width 63, above any real width (x32 at most), and speed Unknown, which has no
    GT/s: that is a dead function, not a degraded link)."""
    return check.actual is not None and check.expected is not None and check.actual < check.expected
