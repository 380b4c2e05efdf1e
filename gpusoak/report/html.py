"""The summary pytest-html shows on top of report.html, and the clean-up that keeps it offline.

Every value is escaped: kernel lines and device names come from the node and are not trusted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from pathlib import Path

from gpusoak.model import RECOVERED, CycleResult, Verdict

_COLOURS = {"admit": "#1a7f37", "admit_long_jobs_only": "#4d8f2a", "quarantine": "#cf222e", "retest": "#9a6700",
            "keep_quarantined": "#cf222e", "subset": "#9a6700", "pass": "#1a7f37", "fail": "#cf222e",
            "inconclusive": "#9a6700"}


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def summary(verdict: Verdict, *, run_id: str | None, backend: str | None, kernel: str | None,
            driver: str | None, results: Sequence[CycleResult] = (), document: dict | None = None,
            settle_s: float | None = None, notes: Sequence[dict] = ()) -> str:
    e = escape
    colour = _COLOURS.get(verdict.decision, "#57606a")
    rows = []
    for g in verdict.gpus:
        for n, (action, s) in enumerate(g.actions.items() or [("–", None)]):
            cells = [g.bdf, g.uuid or "–", action]
            if s is None:
                cells += ["0/0", "–", "–", "–", "–"]
            else:
                cells += [f"{s.successes}/{s.attempts}", f"{s.lower_bound:.3f}", _fmt(s.recovery_p50_s),
                          _fmt(s.recovery_p95_s), _fmt(s.recovery_max_s)]
            tds = "".join(f"<td>{e(str(c))}</td>" for c in cells)
            klass = f'<td style="color:{_COLOURS.get(g.gpu_class, "#57606a")};font-weight:bold">{e(g.gpu_class)}</td>'
            said = e("; ".join(g.evidence)) if n == 0 else "″"  # once per GPU
            rows.append(f"<tr>{tds}{klass}<td>{said}</td></tr>")
    evidence = "".join(f"<li>{e(line)}</li>" for line in verdict.evidence)
    evidence += "".join(f'<li class="gpusoak-warning">warning: {e(g.get("bdf", "?"))}: {e(w)}</li>'
                        for g in (document or {}).get("gpus", []) if isinstance(g, dict) for w in g.get("warnings") or [])
    head = "".join(f"<th>{h}</th>" for h in ("GPU", "UUID", "action", "recovered", "lower bound (95%)",
                                            "p50 s", "p95 s", "max s", "class", "evidence"))
    return (
        '<div id="gpusoak-summary">'
        f'<h2>Node {e(verdict.hostname)}: <span id="gpusoak-decision" style="color:{colour}">'
        f"{e(verdict.decision)}</span></h2>"
        f"<p>run {e(run_id or '–')} · backend {e(backend or '–')} · kernel {e(kernel or '–')} · "
        f"driver {e(driver or '–')} · settle window "
        f"{'–' if settle_s is None else f'{settle_s:g} s'}</p>"
        f"<ul>{evidence}</ul>"
        f"{_after_cycle(notes)}"
        f"{_reliability(verdict)}{charts(verdict, results, document)}"
        "<h3>Per GPU and action</h3>"
        f'<table id="gpusoak-gpus" border="1" cellpadding="4" style="border-collapse:collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{load_table(results)}"
        "</div>"
    )


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def load_table(results: Sequence[CycleResult]) -> str:
    """The load's figures per cycle (the load before the reset, the post-check after): what the
    GPU went through just before each reset, and whether it still worked after."""
    from gpusoak.report.result_json import load_figures

    rows = []
    for bdf in dict.fromkeys(r.bdf for r in results):
        for f in load_figures(results, bdf):
            power = "–" if f["power_w_mean"] is None else f"{f['power_w_mean']:.0f} / {f['power_w_max']:.0f}"
            cells = [bdf, f["action"], f["cycle"], f["phase"].replace("_", "-"), f["verdict"] or "–",
                     _num(f["window_s"], ".1f"), _num(f["busy_share"], ".0%"), _num(f["tflops_fp16"], ".4g"),
                     _num(f["tflops_bf16"], ".4g"), _num(f["tflops_fp32"], ".4g"),
                     _num(f["fp16_peak_share"], ".0%"), _num((f["vram_bytes"] or 0) / 2 ** 30, ".2f"),
                     _num(f["vram_fill_gbps"], ".4g"), _num(f["vram_passes"], ".1f"), power,
                     _num(f["sm_clock_mhz_min"], ".0f"), _num(f["temperature_c_max"], ".0f"),
                     f["first_bad"] or (f"telemetry: {f['telemetry']}" if f["telemetry"] else "")]
            rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in (
        "GPU", "action", "cycle", "phase", "verdict", "window s", "busy", "fp16 TFLOP/s", "bf16 TFLOP/s",
        "fp32 TFLOP/s", "fp16 of peak", "VRAM GiB", "fill GB/s", "VRAM passes", "power W mean / max",
        "SM MHz min", "temp °C max", "notes"))
    return ("<h3>Load per cycle</h3>"
            "<p>Work over the time its batches took on the device (checks included); busy: that time "
            "over the window's wall time; power, clock and temperature as NVML read them during the load.</p>"
            '<table id="gpusoak-load" border="1" cellpadding="4" style="border-collapse:collapse">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


# -- pictures ------------------------------------------------------------------------------------
_W, _H, _PAD = 640, 150, 34
_RED, _GREEN, _BLUE, _GREY = "#cf222e", "#1a7f37", "#0969da", "#8c959f"


def _after_cycle(notes: Sequence[dict]) -> str:
    """What the kernel logged for a GPU after its cycle was judged, up to its next reset or the
    end of the run (journal after_cycle records); a charged one turned that cycle into a failure."""
    late = [n for n in notes if n.get("type") == "after_cycle"]
    if not late:
        return ""
    items = []
    for n in late:
        said = "; ".join(f"{f.get('reason')}: {f.get('detail')}" for f in n.get("findings", [])) or \
            f"{len(n.get('events', []))} kernel event(s), none fatal"
        verb = "failed it" if n.get("charged") else "noted"
        items.append(f"<li>{escape(str(n.get('bdf')))} {escape(str(n.get('action')))} cycle {n.get('cycle')} "
                     f"({escape(str(n.get('window')))}): {escape(verb)}: {escape(said)}</li>")
    return f'<h3>After their settle windows</h3><ul id="gpusoak-after-cycle">{"".join(items)}</ul>'


def _reliability(verdict: Verdict) -> str:
    e = escape
    if not any(g.reliability for g in verdict.gpus):
        return ""
    rows = []
    for g in verdict.gpus:
        seqs = "; ".join(f"{a}: {s['outcome']} after {s['cycles']} cycles ({s['failures']} failed){_carried(s)}"
                         for a, s in g.sequences.items()) or "–"
        rows.append(f"<tr><td>{e(g.bdf)}</td><td class=\"gpusoak-class\">{e(g.reliability)}</td>"
                    f"<td>{e('; '.join(g.reliability_reasons))}</td><td>{e(seqs)}</td></tr>")
    test = next((s["sprt"] for g in verdict.gpus for s in g.sequences.values() if s.get("sprt")), None)
    stated = ""
    if test:
        stated = (f"<p>Sequential test per GPU and action (Wald's SPRT): H0 failure rate &le; {test['p0']:g}, "
                  f"H1 &ge; {test['p1']:g}; error rates alpha {test['alpha']:g}, beta {test['beta']:g}; "
                  f"at most {test['cap']} cycles. The Wilson bounds above are kept beside it.</p>")
    return (f"<h3>Reliability: <span id=\"gpusoak-reliability\">{e(verdict.reliability)}</span> "
            f"(decided by {e(verdict.decided_by)})</h3>{stated}"
            '<table id="gpusoak-reliability-table" border="1" cellpadding="4" style="border-collapse:collapse">'
            "<thead><tr><th>GPU</th><th>class</th><th>why</th><th>sequences</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _carried(sequence: dict) -> str:
    """The evidence a sequence's test took over from earlier runs (gpusoak/carry.py)."""
    c = sequence.get("carried") or {}
    if not c.get("runs"):
        return ""
    return f", and {c['attempts']} carried from {c['runs']} earlier run(s) ({c['failures']} failed) since {c['since']}"


def charts(verdict: Verdict, results: Sequence[CycleResult], document: dict | None) -> str:
    """Per GPU: recovery time of every cycle (failures marked), and its history over earlier runs.
    Inline SVG, so the report stays one self-contained file; a small script records each chart's
    rendered size in ``data-rendered`` (what the headless-browser test reads)."""
    by_gpu: dict[str, list[CycleResult]] = {}
    for r in results:
        if r.attempted:
            by_gpu.setdefault(r.bdf, []).append(r)
    history = {g["bdf"]: g for g in (document or {}).get("gpus", []) if isinstance(g, dict)}
    parts = []
    for g in verdict.gpus:
        mine = by_gpu.get(g.bdf, [])
        if mine:
            parts.append(_cycles_chart(g.bdf, mine))
        h = history.get(g.bdf, {})
        if len(h.get("history", [])) > 1:
            parts.append(_history_chart(g.bdf, h["history"], h.get("trends", [])))
    if not parts:
        return ""
    script = ("<script>window.addEventListener('load',function(){document.querySelectorAll('svg.gpusoak-chart')"
              ".forEach(function(s){var r=s.getBoundingClientRect();s.setAttribute('data-rendered',"
              "Math.round(r.width)+'x'+Math.round(r.height)+'/'+s.querySelectorAll('circle,polyline,path,rect').length)})"
              "});</script>")
    return (f'<h3>Charts</h3><div id="gpusoak-charts" style="display:flex;flex-wrap:wrap;gap:8px">'
            f'{"".join(parts)}</div>{script}')


def _cycles_chart(bdf: str, results: list[CycleResult]) -> str:
    ys = [r.recovery_s for r in results if r.outcome == RECOVERED and r.recovery_s is not None]
    top = max(ys) if ys else 1.0
    top = top * 1.1 or 1.0
    n = len(results)

    def x(i: int) -> float:
        return _PAD + (_W - 2 * _PAD) * (i / max(1, n - 1))

    def y(v: float) -> float:
        return _H - _PAD + (-(_H - 2 * _PAD) * (v / top))

    points = [f"{x(i):.1f},{y(r.recovery_s):.1f}" for i, r in enumerate(results)
              if r.outcome == RECOVERED and r.recovery_s is not None]
    fails = [(i, r) for i, r in enumerate(results) if r.outcome != RECOVERED]
    marks = "".join(f'<circle cx="{x(i):.1f}" cy="{_PAD - 8}" r="4" fill="{_RED}">'
                    f"<title>{escape(r.action)} cycle {r.cycle}: {escape(r.outcome)} ({escape(r.reason or '')})</title></circle>"
                    f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{_PAD - 4}" y2="{_H - _PAD}" stroke="{_RED}" '
                    'stroke-dasharray="2,3"/>' for i, r in fails)
    line = f'<polyline fill="none" stroke="{_BLUE}" stroke-width="1.2" points="{" ".join(points)}"/>' if points else ""
    label = (f"{escape(bdf)}: recovery time per cycle ({n} cycles, {len(fails)} failed, red); "
             f"top {top:.2f} s")
    return _frame(f"gpusoak-cycles-{bdf}", label, line + marks, f"{top:.2f} s", "0", "cycle →")


def _history_chart(bdf: str, points: list[dict], found: list[str]) -> str:
    n = len(points)
    rates = [(p["failures"] / p["attempts"]) if p.get("attempts") else 0.0 for p in points]
    p95 = [p.get("p95_s") for p in points]
    top_rate = max(rates + [0.01])
    top_p95 = max([v for v in p95 if v is not None] + [0.001])

    def x(i: int) -> float:
        return _PAD + (_W - 2 * _PAD) * ((i + 0.5) / n)

    bar_w = max(2.0, (_W - 2 * _PAD) / n * 0.5)
    bars = "".join(
        f'<rect x="{x(i) - bar_w / 2:.1f}" y="{_H - _PAD - max(2.0, (_H - 2 * _PAD) * r / top_rate):.1f}" '
        f'width="{bar_w:.1f}" height="{max(2.0, (_H - 2 * _PAD) * r / top_rate):.1f}" fill="{_RED if r else _GREEN}">'
        f"<title>{escape(str(points[i].get('run_id')))}: {points[i]['failures']}/{points[i]['attempts']} failed</title></rect>"
        for i, r in enumerate(rates))
    line_pts = [f"{x(i):.1f},{_H - _PAD - (_H - 2 * _PAD) * v / top_p95:.1f}" for i, v in enumerate(p95) if v is not None]
    line = f'<polyline fill="none" stroke="{_BLUE}" stroke-width="1.5" points="{" ".join(line_pts)}"/>' if line_pts else ""
    label = (f"{escape(bdf)}: failure rate per run (bars, top {top_rate:.1%}; green: none failed) and "
             f"recovery p95 (line, top {top_p95:.2f} s), {n} runs")
    if found:
        label += " — " + escape("; ".join(found))
    return _frame(f"gpusoak-history-{bdf}", label, bars + line, f"{top_rate:.1%}", "0", "run →")


def _frame(ident: str, label: str, body: str, top: str, bottom: str, xlabel: str) -> str:
    axes = (f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="{_GREY}"/>'
            f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="{_GREY}"/>'
            f'<text x="2" y="{_PAD + 4}" font-size="10">{escape(top)}</text>'
            f'<text x="2" y="{_H - _PAD}" font-size="10">{escape(bottom)}</text>'
            f'<text x="{_W - _PAD - 40}" y="{_H - 8}" font-size="10">{escape(xlabel)}</text>')
    return (f'<figure><svg class="gpusoak-chart" id="{escape(ident)}" '
            f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" aria-label="{label}">'
            f"{axes}{body}</svg><figcaption>{label}</figcaption></figure>")


_PYPI_LINK = re.compile(r'<a href="https?://[^"]*">(pytest-html)</a>')


def make_offline(path: Path) -> None:
    """pytest-html's template links to PyPI; the report must open with no network at all."""
    text = path.read_text(encoding="utf-8")
    cleaned = _PYPI_LINK.sub(r"\1", text)
    if cleaned != text:
        path.write_text(cleaned, encoding="utf-8")
