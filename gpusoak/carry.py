"""Evidence that carries over: a profile's sequential tests go on from the earlier runs in its history.

A 1 h night reaches about a dozen cycles per action on a real node, and a clean GPU needs 150 for
the sequential test to call it reliable. So a run of a profile that names a history (nightly)
starts each GPU's test for each action from the attempts and failures that count, and this run's
cycles add to them. What counts (docs/verdict.md, "Evidence over several nights"):

- runs of the same node (``node.name``), the same GPU (by UUID, by PCI address where a run has no
  UUID, as trends matches them), and the same action meaning the same (``trends.meaning_changed``);
- only the newest runs in a row with this run's driver version and kernel release: a change of
  either starts afresh, and a run before the change never counts, even if a later one went back;
- only the test still open: a test that ended ``reliable`` or at its cap is closed, and the run
  after it opened a new one. A reliable decision stands while the new test has seen no failure
  (``Carried.standing``), so a node stays churn-safe from one test to the next; the first failure
  ends it, and then only the open test can decide again. An ``unreliable`` decision never closes:
  its failures are carried for as long as the driver and kernel stay the same. Tested again and
  again, a GPU failing 1 % of its resets, which one test in four passes (``sprt.
  operating_characteristic``, the nightly cap), would pass in the end;
- carried failures count as failures, and carried attempts count toward the cap;
- a history that could not be read whole carries nothing: what could not be looked at is not
  evidence.

Carried evidence alone never passes a GPU: a GPU and action must have been attempted in this run
for its outcome to be ``reliable`` (``schedule.Sequence.outcome``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpusoak.verdict import trends
from gpusoak.verdict.sequences import Carried  # noqa: F401  (built here, kept in the sequence)
from gpusoak.verdict.sprt import ACCEPT_H0, ACCEPT_H1, SprtParams, resume

RELIABLE, UNRELIABLE = ACCEPT_H0, ACCEPT_H1


def node_of(doc: dict[str, Any]) -> str | None:
    node = doc.get("node") or {}
    return node.get("name") or node.get("hostname")


def build_of(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    node = doc.get("node") or {}
    return node.get("driver"), node.get("kernel")


def _run_name(doc: dict[str, Any]) -> str:
    run = doc.get("run") or {}
    return f"run {run.get('run_id')} ({run.get('started_at')})"


def same_build(history: trends.History, node_name: str, driver: str | None,
               kernel: str | None) -> tuple[list[dict[str, Any]], str]:
    """The newest runs of this node in a row with this driver and kernel (newest first), and what
    stopped the row, in words."""
    if driver is None or kernel is None:
        return [], f"this run's driver ({driver}) or kernel ({kernel}) is not known"
    mine = [d for d in history.runs if node_of(d) == node_name]
    row: list[dict[str, Any]] = []
    for doc in reversed(mine):  # history.runs is oldest first
        if build_of(doc) != (driver, kernel):
            then_driver, then_kernel = build_of(doc)
            return row, f"{_run_name(doc)} had driver {then_driver}, kernel {then_kernel}"
        row.append(doc)
    return row, f"no earlier run of {node_name} in the history" if not mine else ""


def gpu_key(gpu: dict[str, Any]) -> str:
    """A GPU across runs: its UUID, or its PCI address where a run has none (as trends matches)."""
    return gpu.get("uuid") or gpu["bdf"]


def _sequence(doc: dict[str, Any], key: str, action: str) -> dict[str, Any] | None:
    for g in doc.get("gpus") or ():
        if isinstance(g, dict) and "bdf" in g and gpu_key(g) == key:
            seq = (g.get("sequences") or {}).get(action)
            return seq if isinstance(seq, dict) else None
    return None


def _ended(seq: dict[str, Any]) -> str | None:
    """How the run's test ended where it closed: reliable, or at its cap (undecided). An
    unreliable test never closes, and a fixed-cycle run has no test to close."""
    sprt = seq.get("sprt")
    if not isinstance(sprt, dict):
        return None
    if sprt.get("decision") == RELIABLE:
        return RELIABLE
    if seq.get("stopped") == "cap" and sprt.get("decision") != UNRELIABLE:
        return "cap"
    return None


def carried_one(row: list[dict[str, Any]], stop: str, key: str, action: str, semantics: dict[str, int],
                params: SprtParams) -> Carried:
    """What one GPU (``key``: its UUID, or its address without one) and action carries from the
    row of same-build runs (newest first)."""
    runs = attempts = failures = 0
    since = standing = None
    for doc in row:
        if trends.meaning_changed(doc, semantics, {action}):
            stop = f"{action} meant something else in {_run_name(doc)}"
            break
        seq = _sequence(doc, key, action)
        if seq is None:
            continue
        if (end := _ended(seq)) is not None:
            standing = (doc.get("run") or {}).get("run_id") if end == RELIABLE else None
            stop = f"the test ended {'reliable' if end == RELIABLE else 'at its cap'} in {_run_name(doc)}"
            break
        attempts += int(seq.get("attempts") or 0)
        failures += int(seq.get("failures") or 0)
        if seq.get("attempts"):
            runs += 1
            since = (doc.get("run") or {}).get("started_at")
    test = resume(params, attempts, failures)
    if test.decision == RELIABLE or (test.decision != UNRELIABLE and test.cycles >= params.cap):
        # This run's test would end before its first cycle (its parameters changed since): a new one.
        return Carried(reason=f"nothing carried: the {attempts} attempts carried would already end this run's "
                              f"test ({params.describe()}); a new test starts")
    if failures:
        standing = None  # a failure since the reliable decision ends it: only the open test decides now
    if not runs:
        return Carried(standing=standing, reason=f"nothing carried: {stop or 'no earlier attempt'}")
    reason = f"{attempts} attempts, {failures} failed, from {runs} earlier run(s) since {since}"
    return Carried(runs, attempts, failures, since, standing, reason + (f"; before them: {stop}" if stop else ""))


@dataclass(frozen=True)
class Carry:
    """What a run takes over from its history: the basis, and each GPU and action's evidence."""

    history: str
    node: str
    driver: str | None
    kernel: str | None
    runs: tuple[str, ...]  # run_ids of the same-build row, newest first
    problems: tuple[str, ...]
    sequences: dict[tuple[str, str], Carried]  # (bdf, action) -> what it carries

    def to_dict(self) -> dict[str, Any]:
        gpus: dict[str, dict[str, Any]] = {}
        for (bdf, action), c in sorted(self.sequences.items()):
            gpus.setdefault(bdf, {})[action] = c.to_dict()
        return {"history": self.history, "node": self.node, "driver": self.driver, "kernel": self.kernel,
                "runs": list(self.runs), "problems": list(self.problems), "gpus": gpus}


def carry(history: trends.History, folder: Path | str, node_name: str, driver: str | None, kernel: str | None,
          semantics: dict[str, int], gpus: Iterable[tuple[str, str | None]], actions: Iterable[str],
          params: SprtParams) -> Carry:
    """Each GPU's (bdf, uuid) evidence for each action, from an earlier history."""
    gpus, actions = list(gpus), list(actions)
    if history.problems:
        why = (f"nothing carried: {len(history.problems)} file(s) of the history could not be read, and what "
               "could not be looked at is not evidence")
        return Carry(str(folder), node_name, driver, kernel, (), tuple(history.problems),
                     {(bdf, a): Carried(reason=why) for bdf, _ in gpus for a in actions})
    row, stop = same_build(history, node_name, driver, kernel)
    seqs = {(bdf, a): carried_one(row, stop, uuid or bdf, a, semantics, params) for bdf, uuid in gpus for a in actions}
    return Carry(str(folder), node_name, driver, kernel, tuple(str((d.get("run") or {}).get("run_id")) for d in row),
                 (), seqs)


def from_header(header: dict[str, Any]) -> dict[tuple[str, str], Carried]:
    """The evidence a journal's run started from (its header's ``carried``; none before 1.3)."""
    recorded = header.get("carried")
    if not isinstance(recorded, dict):
        return {}
    return {(bdf, action): Carried.from_dict(c) for bdf, per in (recorded.get("gpus") or {}).items()
            for action, c in (per or {}).items() if isinstance(c, dict)}
