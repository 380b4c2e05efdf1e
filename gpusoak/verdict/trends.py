"""Trends: this run against earlier ones (a history folder of result.json files, or one baseline).

Per GPU (matched by UUID, else by PCI address), four signs that a node is getting worse:

- failure rate rising: this run's failed share of attempts is higher than the earlier runs'
  pooled share, and a one-sided binomial test says so at the 5 % level;
- recovery p95 rising: the slowest action's p95 is more than 1.5 times the earlier runs' median
  p95, and at least half a second more;
- AER rate rising: AER events per attempt more than double the earlier mean, with at least 3 events;
- class falling: the reliability class is worse than in the latest earlier run.

Runs are compared only where every action both ran means the same: an action's semantics version
(result.json ``run.actions_semantics``; a file from before 1.2 names none, so its actions had their
first meaning) changes when the action starts doing something else — flr 2 unbinds the slot from
nvidia, resets and binds back, flr 1 reset under the bound driver. An earlier run that differs is
left out of the comparison and listed in ``trends.not_compared``, never read as a regression.

The history folder is read by gpusoak/history.py (corrupt or foreign files are reported and
skipped, never fatal); everything here is pure.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from gpusoak.model import FIRST_SEMANTICS
from gpusoak.verdict.score import RELIABILITY_CLASSES

P95_FACTOR, P95_MIN_S = 1.5, 0.5
AER_FACTOR, AER_MIN_EVENTS = 2.0, 3
ALPHA = 0.05


@dataclass
class History:
    runs: list[dict[str, Any]] = field(default_factory=list)  # earlier result.json documents, oldest first
    problems: list[str] = field(default_factory=list)


def point(gpu: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """One run of one GPU, as the trend chart and the comparisons use it."""
    attempts = sum(a.get("attempts", 0) for a in gpu.get("actions", {}).values())
    successes = sum(a.get("successes", 0) for a in gpu.get("actions", {}).values())
    p95s = [a["recovery_s"]["p95"] for a in gpu.get("actions", {}).values()
            if a.get("recovery_s", {}).get("p95") is not None]
    return {"run_id": run.get("run_id"), "started_at": run.get("started_at"), "attempts": attempts,
            "failures": attempts - successes, "p95_s": max(p95s) if p95s else None,
            "aer_events": gpu.get("aer_events", 0),
            "class": (gpu.get("reliability") or {}).get("class")}


def _key(gpu: dict[str, Any]) -> str:
    return gpu.get("uuid") or gpu["bdf"]


def series(history: History) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in history.runs:
        for g in doc.get("gpus", []):
            if isinstance(g, dict) and "bdf" in g:
                out.setdefault(_key(g), []).append(point(g, doc.get("run", {})))
    return out


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                          + i * math.log(p) + (n - i) * math.log1p(-p))
    return min(1.0, total)


def compare(now: dict[str, Any], before: list[dict[str, Any]]) -> list[str]:
    """The signs of getting worse, as sentences (empty: none)."""
    found: list[str] = []
    if not before:
        return found
    n_attempts = sum(b["attempts"] for b in before)
    n_failures = sum(b["failures"] for b in before)
    if now["attempts"] and now["failures"]:
        # Earlier rate with one pseudo-failure when there were none: no failure ever seen is not a
        # rate of zero, and a rate of zero would call any single failure a trend.
        rate_before = (n_failures + 0.5) / (n_attempts + 1)
        rate_now = now["failures"] / now["attempts"]
        p = binomial_tail(now["failures"], now["attempts"], rate_before)
        if rate_now > rate_before and p < ALPHA:
            found.append(f"failure rate rising: {now['failures']}/{now['attempts']} ({rate_now:.1%}) against "
                         f"{n_failures}/{n_attempts} in {len(before)} earlier run(s) (p = {p:.3g})")
    p95s = [b["p95_s"] for b in before if b["p95_s"] is not None]
    if now["p95_s"] is not None and p95s:
        med = statistics.median(p95s)
        if now["p95_s"] > P95_FACTOR * med and now["p95_s"] - med >= P95_MIN_S:
            found.append(f"recovery p95 rising: {now['p95_s']:.2f} s against a median of {med:.2f} s before")
    rates = [b["aer_events"] / b["attempts"] for b in before if b["attempts"]]
    if now["attempts"] and now["aer_events"] >= AER_MIN_EVENTS and rates:
        mean = statistics.fmean(rates)
        rate = now["aer_events"] / now["attempts"]
        if rate > AER_FACTOR * mean:
            found.append(f"AER rate rising: {rate:.2f} per attempt against {mean:.2f} before")
    last = before[-1].get("class")
    if now.get("class") in RELIABILITY_CLASSES and last in RELIABILITY_CLASSES \
            and RELIABILITY_CLASSES.index(now["class"]) > RELIABILITY_CLASSES.index(last):
        found.append(f"class falling: {now['class']}, it was {last}")
    return found


def semantics(doc: dict[str, Any]) -> dict[str, int]:
    """What each action name meant in a result.json's run (none named: the first meaning)."""
    named = (doc.get("run") or {}).get("actions_semantics")
    return {str(k): int(v) for k, v in named.items()} if isinstance(named, dict) else {}


def attempted(doc: dict[str, Any]) -> set[str]:
    """The actions a result.json's run attempted on any GPU."""
    return {name for g in doc.get("gpus", []) if isinstance(g, dict)
            for name, a in (g.get("actions") or {}).items() if isinstance(a, dict) and a.get("attempts")}


def meaning_changed(earlier: dict[str, Any], now_semantics: dict[str, int], now_actions: set[str]) -> dict[str, dict]:
    """The actions both runs attempted whose meaning differs: {action: {then, now}}."""
    then = semantics(earlier)
    return {a: {"then": then.get(a, FIRST_SEMANTICS), "now": now_semantics.get(a, FIRST_SEMANTICS)}
            for a in sorted(attempted(earlier) & now_actions)
            if then.get(a, FIRST_SEMANTICS) != now_semantics.get(a, FIRST_SEMANTICS)}


def same_meaning(history: History, now_semantics: dict[str, int], now_actions: set[str]) -> tuple[History, list[dict]]:
    """The earlier runs comparable with this one, and those left out (run_id and what changed)."""
    kept, left_out = [], []
    for doc in history.runs:
        changed = meaning_changed(doc, now_semantics, now_actions)
        if changed:
            left_out.append({"run_id": doc["run"].get("run_id"), "actions": changed})
        else:
            kept.append(doc)
    return History(kept, list(history.problems)), left_out


def annotate(document: dict[str, Any], history: History) -> dict[str, Any]:
    """Add each GPU's history and trends (and the history's problems) to a result.json document.
    Earlier runs whose actions meant something else are not compared (``trends.not_compared``)."""
    history, not_compared = same_meaning(history, semantics(document), attempted(document))
    past = series(history)
    for g in document.get("gpus", []):
        before = past.get(_key(g), [])
        now = point(g, document.get("run", {}))
        g["history"] = before + [now]
        g["trends"] = compare(now, before)
    document["trends"] = {"earlier_runs": len(history.runs), "problems": history.problems,
                          "worsening": sorted(g["bdf"] for g in document.get("gpus", []) if g.get("trends")),
                          "not_compared": not_compared}
    return document


def before_classes(history: History) -> dict[str, str]:
    """Each GPU's class in the latest earlier run (by UUID and by address)."""
    out: dict[str, str] = {}
    for doc in history.runs:
        for g in doc.get("gpus", []):
            cls = (g.get("reliability") or {}).get("class") if isinstance(g, dict) else None
            if cls:
                out[g.get("uuid") or g["bdf"]] = cls
                out[g["bdf"]] = cls
    return out
