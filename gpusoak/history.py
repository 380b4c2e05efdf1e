"""The history folder read: earlier result.json files (a folder of them, or one baseline) for
the trends and the carry-over (gpusoak/verdict/trends.py, gpusoak/carry.py). Corrupt or foreign
files are reported and skipped, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

from gpusoak.verdict.trends import History, _key, point


def load(paths: list[Path], exclude_run: str | None = None) -> History:
    """Earlier results from files and folders (``*.json`` inside). Unreadable ones become problems."""
    files: list[Path] = []
    out = History()
    for p in paths:
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.exists():
            files.append(p)
        else:
            out.problems.append(f"{p}: no such file or folder")
    for f in files:
        try:
            doc = json.loads(f.read_text())
            if not isinstance(doc, dict) or not isinstance(doc.get("gpus"), list) or not isinstance(doc.get("run"), dict):
                raise ValueError("not a gpusoak result.json")
            for g in doc["gpus"]:  # every GPU must read as a point, or the file is skipped whole
                _key(g), point(g, doc["run"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            out.problems.append(f"{f}: skipped ({err})")
            continue
        if exclude_run and doc["run"].get("run_id") == exclude_run:
            continue
        out.runs.append(doc)
    out.runs.sort(key=lambda d: str(d["run"].get("started_at") or ""))
    return out
