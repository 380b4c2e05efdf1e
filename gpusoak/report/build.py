"""Rebuild result.json and junit.xml from a journal (the HTML comes from pytest-html)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpusoak import journal, score
from gpusoak.model import Verdict
from gpusoak.report import junit, result_json


@dataclass(frozen=True)
class Built:
    verdict: Verdict
    content: journal.JournalContent
    result_json: Path
    junit_xml: Path


def verdict_of(content: journal.JournalContent) -> Verdict:
    h = content.header
    gpus = [(g["bdf"], g.get("uuid")) for g in h.get("gpus", [])]
    known = {bdf for bdf, _ in gpus}
    gpus += sorted({(r.bdf, r.uuid) for r in content.results if r.bdf not in known})
    return score.verdict(h.get("hostname") or "unknown", gpus, content.results)


def rebuild(journal_path: Path, out_dir: Path) -> Built:
    content = journal.read(journal_path)
    verdict = verdict_of(content)
    out_dir.mkdir(parents=True, exist_ok=True)
    rj, jx = out_dir / "result.json", out_dir / "junit.xml"
    result_json.write(rj, result_json.build(content, verdict))
    junit.write(jx, junit.build(content, verdict))
    return Built(verdict, content, rj, jx)
