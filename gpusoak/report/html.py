"""The summary pytest-html shows on top of report.html, and the clean-up that keeps it offline.

Every value is escaped: kernel lines and device names come from the node and are not trusted.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from gpusoak.model import Verdict

_COLOURS = {"admit": "#1a7f37", "quarantine": "#cf222e", "retest": "#9a6700",
            "pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def summary(verdict: Verdict, *, run_id: str | None, backend: str | None, kernel: str | None,
            driver: str | None) -> str:
    e = escape
    colour = _COLOURS.get(verdict.decision, "#57606a")
    rows = []
    for g in verdict.gpus:
        for action, s in (g.actions.items() or [("–", None)]):
            cells = [g.bdf, g.uuid or "–", action]
            if s is None:
                cells += ["0/0", "–", "–", "–", "–"]
            else:
                cells += [f"{s.successes}/{s.attempts}", f"{s.lower_bound:.3f}", _fmt(s.recovery_p50_s),
                          _fmt(s.recovery_p95_s), _fmt(s.recovery_max_s)]
            tds = "".join(f"<td>{e(str(c))}</td>" for c in cells)
            klass = f'<td style="color:{_COLOURS.get(g.gpu_class, "#57606a")};font-weight:bold">{e(g.gpu_class)}</td>'
            rows.append(f"<tr>{tds}{klass}<td>{e('; '.join(g.evidence))}</td></tr>")
    evidence = "".join(f"<li>{e(line)}</li>" for line in verdict.evidence)
    head = "".join(f"<th>{h}</th>" for h in ("GPU", "UUID", "action", "recovered", "lower bound (95%)",
                                            "p50 s", "p95 s", "max s", "class", "evidence"))
    return (
        '<div id="gpusoak-summary">'
        f'<h2>Node {e(verdict.hostname)}: <span id="gpusoak-decision" style="color:{colour}">'
        f"{e(verdict.decision)}</span></h2>"
        f"<p>run {e(run_id or '–')} · backend {e(backend or '–')} · kernel {e(kernel or '–')} · "
        f"driver {e(driver or '–')}</p>"
        f"<ul>{evidence}</ul>"
        f'<table id="gpusoak-gpus" border="1" cellpadding="4" style="border-collapse:collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "</div>"
    )


_PYPI_LINK = re.compile(r'<a href="https?://[^"]*">(pytest-html)</a>')


def make_offline(path: Path) -> None:
    """pytest-html's template links to PyPI; the report must open with no network at all."""
    text = path.read_text(encoding="utf-8")
    cleaned = _PYPI_LINK.sub(r"\1", text)
    if cleaned != text:
        path.write_text(cleaned, encoding="utf-8")
