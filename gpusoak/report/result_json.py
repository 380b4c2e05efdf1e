"""result.json: the verdict in a versioned, documented shape (docs/result-json.md).

Validated against ``result.schema.json`` beside this file. Written atomically (temporary file and
rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from gpusoak import __version__
from gpusoak.files import write_atomically
from gpusoak.journal import JournalContent
from gpusoak.model import FIRST_SEMANTICS, OUTCOMES, Verdict
from gpusoak.verdict import inventory

SCHEMA_VERSION = "1.4"  # 1.1 added: run.profile, node.reliability/labels, gpus[].reliability/sequences/aer_events
# 1.2 added: run.actions_semantics, trends.not_compared; 1.3: inventory, node.decision subset and
# admit_long_jobs_only (a profile's run whose worst GPU is long-jobs-only); 1.4: gpus[].load, the
# load's figures per cycle


def schema() -> dict[str, Any]:
    return json.loads((resources.files("gpusoak.report") / "result.schema.json").read_text())


def semantics_of(header: dict[str, Any]) -> dict[str, int]:
    """What each action name meant in this run (the journal header's ``actions_semantics``)."""
    recorded = header.get("actions_semantics")
    if isinstance(recorded, dict):
        return {str(k): int(v) for k, v in recorded.items()}
    actions = (header.get("options") or {}).get("actions") or ()
    return {str(a): FIRST_SEMANTICS for a in actions}


def build(content: JournalContent, verdict: Verdict) -> dict[str, Any]:
    h = content.header
    outcomes = {o: 0 for o in OUTCOMES}
    for r in content.results:
        outcomes[r.outcome] += 1
    warnings = {g.get("bdf"): list(g.get("warnings") or []) for g in h.get("gpus", [])}
    for note in content.notes:  # found under load, after the header was written
        if note.get("type") == "link_warning":
            warnings.setdefault(note.get("bdf"), []).extend(note.get("warnings") or [])
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": f"gpusoak {__version__}",
        "run": {
            "run_id": h.get("run_id"),
            "started_at": h.get("started_at"),
            "backend": h.get("backend"),
            "options": h.get("options", {}),
            "cycles_recorded": len(content.results),
            "outcomes": outcomes,
            "journal_problems": content.problems,
            "profile": h.get("profile"),
            "actions_semantics": semantics_of(h),
        },
        # Every NVIDIA GPU found, the ones tested, and the node's previous inventory (1.3; null for
        # a journal from before it was recorded).
        "inventory": cov.to_dict() if (cov := inventory.coverage(h)) is not None else None,
        "node": {
            "hostname": verdict.hostname,
            "name": h.get("node_name") or verdict.hostname,
            "kernel": h.get("kernel"),
            "driver": h.get("driver"),
            "nvml": h.get("nvml"),
            "decision": verdict.decision,
            "decided_by": verdict.decided_by,
            "evidence": list(verdict.evidence),
            "reliability": verdict.reliability,
            "labels": {"gpusoak.io/reset-class": verdict.reliability},
        },
        "gpus": [
            {
                "bdf": g.bdf,
                "uuid": g.uuid,
                "class": g.gpu_class,
                "evidence": list(g.evidence),
                "reliability": {"class": g.reliability, "reasons": list(g.reliability_reasons)},
                "sequences": g.sequences,
                "aer_events": g.aer_events,
                # Below capability before any reset (an x8-wired slot, a BIOS-capped generation):
                # the node's build, reported, never a failure (1.2, optional).
                "warnings": list(warnings.get(g.bdf, [])),
                # What each cycle's load and post-check achieved (1.4): gpusoak/load/checks.py.
                "load": load_figures(content.results, g.bdf),
                "actions": {
                    name: {
                        "attempts": s.attempts,
                        "successes": s.successes,
                        "lower_bound": s.lower_bound,
                        "recovery_s": {"p50": s.recovery_p50_s, "p95": s.recovery_p95_s, "max": s.recovery_max_s},
                    }
                    for name, s in g.actions.items()
                },
            }
            for g in verdict.gpus
        ],
    }


# The load's figures each cycle keeps (gpusoak/load/protocol.py LoadSummary), in this order.
LOAD_FIGURES = ("verdict", "window_s", "busy_share", "tflops_fp16", "tflops_bf16", "tflops_fp32", "fp16_peak_share",
                "vram_bytes", "vram_fill_gbps", "vram_passes", "power_w_mean", "power_w_max", "sm_clock_mhz_min",
                "temperature_c_max", "utilisation_pct_mean", "telemetry", "first_bad", "device_name")


def load_figures(results: Any, bdf: str) -> list[dict[str, Any]]:
    """One row per load that ran for ``bdf``: the load before a cycle's reset and the post-check
    after it."""
    rows = []
    for r in results:
        if r.bdf != bdf:
            continue
        for phase, summary in (("load", r.load), ("post_check", r.post_check)):
            if isinstance(summary, dict) and summary.get("exit") is not None:
                rows.append({"action": r.action, "cycle": r.cycle, "phase": phase,
                             **{k: summary.get(k) for k in LOAD_FIGURES}})
    return rows


def write(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(document, indent=2, sort_keys=False) + "\n")
