"""A node's result as a Prometheus textfile, for node_exporter's textfile collector.

Written atomically (a temporary file in the same folder, then rename): the collector must never
read half a file. Metric and label names follow the exposition format; label values are escaped.
One series per GPU and action for attempts, failures, the Wilson lower bound and recovery-time
quantiles; the node's and each GPU's reliability class as a one-hot gauge; and the run's time.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from gpusoak.files import write_atomically
from gpusoak.verdict.score import RELIABILITY_CLASSES

_QUANTILES = (("p50", "0.5"), ("p95", "0.95"), ("max", "1"))


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw: Any) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in kw.items()) + "}"


def render(document: dict[str, Any]) -> str:
    node = document.get("node", {})
    name = node.get("name") or node.get("hostname") or "unknown"
    run = document.get("run", {})
    out: list[str] = []

    def family(metric: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {metric} {help_}")
        out.append(f"# TYPE {metric} {kind}")
        out.extend(f"{metric}{labels} {_num(v)}" for labels, v in samples)

    attempts, failures, bounds, quantiles, gpu_class = [], [], [], [], []
    for g in document.get("gpus", []):
        for action, s in g.get("actions", {}).items():
            lab = dict(node=name, gpu=g["bdf"], uuid=g.get("uuid") or "", action=action)
            attempts.append((_labels(**lab), s["attempts"]))
            failures.append((_labels(**lab), s["attempts"] - s["successes"]))
            bounds.append((_labels(**lab), s["lower_bound"]))
            for key, q in _QUANTILES:
                v = s.get("recovery_s", {}).get(key)
                if v is not None:
                    quantiles.append((_labels(**lab, quantile=q), v))
        cls = (g.get("reliability") or {}).get("class")
        for c in RELIABILITY_CLASSES:
            gpu_class.append((_labels(node=name, gpu=g["bdf"], uuid=g.get("uuid") or "", **{"class": c}),
                              1 if c == cls else 0))
    family("gpusoak_cycles_attempted", "gauge", "Attempted reset cycles in the last run, per GPU and action.", attempts)
    family("gpusoak_cycles_failed", "gauge", "Failed or hung reset cycles in the last run, per GPU and action.", failures)
    family("gpusoak_success_lower_bound", "gauge",
           "Wilson 95% lower bound of the reset success rate, per GPU and action.", bounds)
    family("gpusoak_recovery_seconds", "gauge",
           "Recovery time quantiles (0.5, 0.95; 1 is the maximum) of the recovered cycles.", quantiles)
    family("gpusoak_gpu_reliability_class", "gauge", "1 for the GPU's reliability class, 0 for the others.", gpu_class)
    node_class = node.get("reliability")
    family("gpusoak_node_reliability_class", "gauge", "1 for the node's reliability class (its worst GPU's).",
           [(_labels(node=name, **{"class": c}), 1 if c == node_class else 0) for c in RELIABILITY_CLASSES])
    family("gpusoak_node_decision", "gauge", "1 for the node's decision.",
           [(_labels(node=name, decision=node.get("decision", "unknown")), 1)])
    started = _epoch(run.get("started_at"))
    if started is not None:
        family("gpusoak_last_run_timestamp_seconds", "gauge", "When the last run started (Unix time).",
               [(_labels(node=name, run_id=run.get("run_id") or ""), started)])
    return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def write(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, render(document), f"the metrics file {path}")
