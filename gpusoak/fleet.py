"""The fleet: every node's result.json in one view, and each node's decision as its scheduler's action.

``collect`` walks folders for result.json files (thousands), keeps one small row per node (its
latest run), and reports corrupt or partial files instead of stopping. ``write`` makes fleet.json,
fleet.csv and a self-contained fleet.html (a table sortable by any column, and a chart of the
fleet by class).

Decisions become scheduler actions (printed by default; run with ``apply``):

- Slurm: a node whose run says quarantine (or reboot_required, keep_quarantined) is drained with
  ``scontrol update NodeName=X State=DRAIN Reason="gpusoak: ..."``. A readmission run that admits
  a node resumes it with ``State=RESUME``, but only when its drain reason starts with ``gpusoak:``:
  gpusoak never resumes a node somebody else drained.
- Kubernetes: every node gets the label ``gpusoak.io/reset-class=<class>``. Quarantine adds the
  taint ``gpusoak.io/quarantine=<reason>:NoSchedule``, and a readmission that admits removes it.
  The commands go through kubectl, and the exact patch is shown with them.

A node admitted for long jobs only (``admit_long_jobs_only``) is left in service and never resumed
or untainted by it: only a readmission's ``admit`` lifts a quarantine. Kubernetes gets its label
(``long-jobs-only``), which is how pods that churn GPUs are kept off it (a node affinity ``NotIn``
on the label). Slurm gets no change: a node feature set by ``scontrol update AvailableFeatures=``
overwrites the node's features and lasts only until slurmctld restarts without ``-R`` (scontrol(1),
AvailableFeatures), so the feature belongs in slurm.conf; the printed line says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from gpusoak.files import write_atomically
from gpusoak.host.commands import CommandResult, Runner, SubprocessRunner
from gpusoak.verdict.score import ADMIT_LONG_JOBS_ONLY, RELIABILITY_CLASSES

DRAIN = ("quarantine", "reboot_required", "keep_quarantined")
# Slurm and Kubernetes node names: letters, digits, dot, dash, underscore; never a leading dash
# (it would read as an option) and no space or "=" (it would read as another scontrol field).
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
REASON_PREFIX = "gpusoak:"
LABEL = "gpusoak.io/reset-class"
TAINT = "gpusoak.io/quarantine"
CLASS_ORDER = RELIABILITY_CLASSES  # best first


@dataclass(frozen=True)
class Row:
    node: str  # the scheduler's name for it
    hostname: str
    run_id: str
    started_at: str
    decision: str
    decided_by: str
    reliability: str
    gpus: int
    attempts: int
    failures: int
    failure_rate: float
    worst_gpu: str  # the GPU that decided the class, and its first reason
    why: str
    path: str


@dataclass
class Rollup:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    superseded: int = 0  # older results of nodes that have a newer one
    files: int = 0


def find(folders: Iterable[Path]) -> Iterator[Path]:
    """Every result.json below the folders (a file given directly counts too)."""
    for top in folders:
        if top.is_file():
            yield top
            continue
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.name == "result.json":
                            yield Path(entry.path)
            except OSError:
                continue


def row_of(doc: Any, path: Path) -> Row:
    """One node's row; ValueError (with why) for a file that is not a complete result.json."""
    if not isinstance(doc, dict) or not isinstance(doc.get("node"), dict) or not isinstance(doc.get("gpus"), list):
        raise ValueError("not a gpusoak result.json (no node or gpus)")
    node, run = doc["node"], doc.get("run") or {}
    if "decision" not in node:
        raise ValueError("no node decision: a partial file")
    attempts = failures = 0
    worst, worst_rank, why = "", -1, ""
    for g in doc["gpus"]:
        for s in (g.get("actions") or {}).values():
            attempts += int(s.get("attempts", 0))
            failures += int(s.get("attempts", 0)) - int(s.get("successes", 0))
        cls = (g.get("reliability") or {}).get("class") or ""
        rank = CLASS_ORDER.index(cls) if cls in CLASS_ORDER else -1
        if rank > worst_rank:
            worst_rank, worst = rank, g.get("bdf", "")
            reasons = (g.get("reliability") or {}).get("reasons") or g.get("evidence") or []
            why = str(reasons[0]) if reasons else ""
    name = str(node.get("name") or node.get("hostname") or path.parent.name)
    if not NODE_NAME.fullmatch(name):
        # The name becomes an argument of scontrol or kubectl: only a plain node name may.
        raise ValueError(f"node name {name[:80]!r} is not a plain node name")
    return Row(
        node=name,
        hostname=str(node.get("hostname", "")), run_id=str(run.get("run_id") or ""),
        started_at=str(run.get("started_at") or ""), decision=str(node["decision"]),
        decided_by=str(node.get("decided_by") or "fixed"),
        reliability=str(node.get("reliability") or ""), gpus=len(doc["gpus"]), attempts=attempts,
        failures=failures, failure_rate=round(failures / attempts, 6) if attempts else 0.0,
        worst_gpu=worst, why=why, path=str(path))


def collect(folders: Iterable[Path]) -> Rollup:
    out = Rollup()
    latest: dict[str, Row] = {}
    for path in find(folders):
        out.files += 1
        try:
            with open(path, "rb") as f:
                row = row_of(json.load(f), path)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:  # json errors are ValueErrors
            out.problems.append(f"{path}: skipped ({type(err).__name__}: {err})"[:500])
            continue
        have = latest.get(row.node)
        if have is None or (row.started_at, row.run_id) > (have.started_at, have.run_id):
            if have is not None:
                out.superseded += 1
            latest[row.node] = row
        else:
            out.superseded += 1
    out.rows = sorted(latest.values(), key=lambda r: r.node)
    return out


# -- outputs ---------------------------------------------------------------------------------------
def write(rollup: Rollup, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "fleet.json", "csv": out_dir / "fleet.csv", "html": out_dir / "fleet.html"}
    summary = by_class(rollup)
    write_atomically(paths["json"], json.dumps({"nodes": [asdict(r) for r in rollup.rows], "by_class": summary,
                                       "by_decision": dict(Counter(r.decision for r in rollup.rows)),
                                       "files": rollup.files, "superseded": rollup.superseded,
                                       "problems": rollup.problems}, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    names = list(Row.__dataclass_fields__)
    w.writerow(names)
    for r in rollup.rows:
        w.writerow([getattr(r, n) for n in names])
    write_atomically(paths["csv"], buf.getvalue())
    write_atomically(paths["html"], html(rollup))
    return paths


def by_class(rollup: Rollup) -> dict[str, int]:
    counts = Counter(r.reliability or "unknown" for r in rollup.rows)
    return {c: counts[c] for c in (*CLASS_ORDER, "unknown") if counts[c]}


_COLOUR = {"churn-safe": "#1a7f37", "long-jobs-only": "#4d8f2a", "inconclusive": "#9a6700", "quarantine": "#cf222e",
           "hardware-investigation": "#8250df", "reboot-required": "#6e7781", "unknown": "#afb8c1"}


def html(rollup: Rollup) -> str:
    e = escape
    counts = by_class(rollup)
    total = max(1, sum(counts.values()))
    bars, x = [], 40
    width = 560
    for cls, n in counts.items():
        w = max(1.0, width * n / total)
        bars.append(f'<rect x="{x:.1f}" y="20" width="{w:.1f}" height="40" fill="{_COLOUR.get(cls, "#999")}">'
                    f"<title>{e(cls)}: {n}</title></rect>")
        x += w
    legend = " · ".join(f'<span style="color:{_COLOUR.get(c, "#999")}">■</span> {e(c)} {n}' for c, n in counts.items())
    cols = ["node", "reliability", "decision", "decided_by", "gpus", "attempts", "failures", "failure_rate",
            "worst_gpu", "why", "run_id", "started_at"]
    head = "".join(f'<th data-col="{i}" style="cursor:pointer">{e(c)}</th>' for i, c in enumerate(cols))
    rows = "".join("<tr>" + "".join(
        f'<td style="color:{_COLOUR.get(r.reliability, "inherit")}">{e(str(getattr(r, c)))}</td>' if c == "reliability"
        else f"<td>{e(str(getattr(r, c)))}</td>" for c in cols) + "</tr>" for r in rollup.rows)
    problems = "".join(f"<li>{e(p)}</li>" for p in rollup.problems[:200])
    more = f"<li>… and {len(rollup.problems) - 200} more</li>" if len(rollup.problems) > 200 else ""
    script = """<script>
document.querySelectorAll('#fleet th').forEach(function(th){th.addEventListener('click',function(){
  var i=+th.dataset.col, body=document.querySelector('#fleet tbody'), rows=[].slice.call(body.rows);
  var asc=th.dataset.dir!=='asc'; th.dataset.dir=asc?'asc':'desc';
  rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,p=parseFloat(x),q=parseFloat(y);
    var c=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y);return asc?c:-c;});
  rows.forEach(function(r){body.appendChild(r)});});});
</script>"""
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>gpusoak fleet</title></head><body>"
            f"<h1>gpusoak fleet: {len(rollup.rows)} nodes</h1>"
            f'<svg id="fleet-by-class" width="{width + 80}" height="70" role="img" aria-label="nodes by class">'
            f"{''.join(bars)}</svg><p>{legend}</p>"
            f"<p>{rollup.files} result files read; {rollup.superseded} older results superseded; "
            f"{len(rollup.problems)} skipped.</p>"
            f'<table id="fleet" border="1" cellpadding="3" style="border-collapse:collapse">'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"<h2>Skipped files</h2><ul>{problems}{more}</ul>{script}</body></html>")


# -- decisions for the schedulers ------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    node: str
    scheduler: str
    what: str  # drain, resume, label, taint, untaint, none
    argv: tuple[str, ...]
    why: str
    patch: dict | None = None  # Kubernetes: the merge patch the command amounts to

    def __str__(self) -> str:
        shown = " ".join(_quote(a) for a in self.argv) if self.argv else "(nothing to do)"
        return f"{self.node}: {self.what}: {shown}  # {self.why}"


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a.replace("'", "'\\''") + "'"


def short_reason(row: Row, limit: int = 120) -> str:
    """``gpusoak: <decision> <class> <gpu>: <first reason>`` cut to the limit (Slurm shows it in
    sinfo -R; keep it readable)."""
    text = f"{REASON_PREFIX} {row.decision} {row.reliability} {row.worst_gpu}: {row.why}".strip()
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slurm_changes(rows: Iterable[Row], current_reasons: dict[str, str | None]) -> list[Change]:
    """What Slurm should do, given each node's current drain reason (None: not drained)."""
    out = []
    for r in rows:
        current = current_reasons.get(r.node)
        if r.decision in DRAIN:
            out.append(Change(r.node, "slurm", "drain", ("scontrol", "update", f"NodeName={r.node}", "State=DRAIN",
                                                          f"Reason={short_reason(r)}"), r.decision))
        elif r.decision == "admit" and r.decided_by == "readmission":
            if current is not None and current.startswith(REASON_PREFIX):
                out.append(Change(r.node, "slurm", "resume", ("scontrol", "update", f"NodeName={r.node}",
                                                               "State=RESUME"), "readmission passed"))
            elif current is not None:
                out.append(Change(r.node, "slurm", "none", (), f"drained by someone else ({current!r}): left alone"))
            else:
                out.append(Change(r.node, "slurm", "none", (), "readmission passed; not drained"))
        elif r.decision == ADMIT_LONG_JOBS_ONLY:
            out.append(Change(r.node, "slurm", "none", (), f"{r.decision}: left as it is, for long jobs only; give it "
                              f"a node feature ({r.reliability}) in slurm.conf to keep short jobs off it"))
        else:
            out.append(Change(r.node, "slurm", "none", (), f"{r.decision}: nothing to change"))
    return out


_TAINT_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


def taint_value(row: Row) -> str:
    """A label value (at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    text = _TAINT_VALUE.sub("-", f"{row.reliability}.{row.worst_gpu}").strip("-._")
    return text[:63].rstrip("-._") or "quarantine"


def k8s_changes(rows: Iterable[Row]) -> list[Change]:
    out = []
    for r in rows:
        cls = r.reliability or "inconclusive"
        why = f"reset class {cls}" + ("; for long jobs only: keep pods that churn GPUs off it with a node affinity "
                                      f"NotIn on {LABEL}" if r.decision == ADMIT_LONG_JOBS_ONLY else "")
        # Only a run that decides a class sets the label: a subset of the GPUs, a retest, or a
        # readmission's three cycles (which prove no reliability) leave the one a full run set, so
        # a long-jobs-only label keeps churn off the node across its reboots.
        if r.decision in ("subset", "retest") or (r.decision == "admit" and r.decided_by == "readmission"):
            out.append(Change(r.node, "k8s", "none", (), f"{r.decision}: the label {LABEL} stays as the last "
                              "deciding run set it"))
        else:
            out.append(Change(r.node, "k8s", "label", ("kubectl", "label", "node", r.node, f"{LABEL}={cls}",
                                                        "--overwrite"), why, {"metadata": {"labels": {LABEL: cls}}}))
        if r.decision in DRAIN:
            value = taint_value(r)
            out.append(Change(r.node, "k8s", "taint", ("kubectl", "taint", "node", r.node,
                                                        f"{TAINT}={value}:NoSchedule", "--overwrite"),
                              short_reason(r), {"spec": {"taints": [{"key": TAINT, "value": value,
                                                                     "effect": "NoSchedule"}]}}))
        elif r.decision == "admit" and r.decided_by == "readmission":
            out.append(Change(r.node, "k8s", "untaint", ("kubectl", "taint", "node", r.node, f"{TAINT}:NoSchedule-"),
                              "readmission passed", None))
    return out


def slurm_reasons(runner: Runner, timeout_s: float = 30.0) -> dict[str, str | None]:
    """Each node's drain reason now (None where it is not drained), from ``sinfo --json``."""
    done = runner.run(["sinfo", "--json"], timeout_s=timeout_s)
    if not done.ok:
        raise RuntimeError(f"sinfo --json failed: {done.stderr.strip() or done.returncode}")
    data = json.loads(done.stdout)
    out: dict[str, str | None] = {}
    for n in data.get("nodes", []):
        name = n.get("name") or n.get("hostname")
        flags = set(n.get("state_flags") or [])
        state = n.get("state")
        states = set(state) if isinstance(state, list) else {str(state).upper()}
        drained = "DRAIN" in flags or any("DRAIN" in s for s in states)
        out[name] = (n.get("reason") or "") if drained else None
    return out


def apply(changes: list[Change], runner: Runner | None = None, timeout_s: float = 60.0) -> list[CommandResult]:
    runner = runner or SubprocessRunner()
    return [runner.run(list(c.argv), timeout_s=timeout_s) for c in changes if c.argv]
