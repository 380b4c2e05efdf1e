"""Rebuild result.json and junit.xml from a journal (the HTML comes from pytest-html)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from gpusoak import carry, journal
from gpusoak import history as history_file
from gpusoak.model import CycleResult, Verdict
from gpusoak.report import junit, result_json
from gpusoak.verdict import inventory, score, trends
from gpusoak.verdict.sequences import Cap, Sequence
from gpusoak.verdict.sprt import SprtParams


@dataclass(frozen=True)
class Built:
    verdict: Verdict
    content: journal.JournalContent
    result_json: Path
    junit_xml: Path
    document: dict = field(default_factory=dict)  # result.json as written (history and trends included)


def verdict_of(content: journal.JournalContent, before: dict[str, str] | None = None) -> Verdict:
    """The verdict of a journal. ``before``: each GPU's class in an earlier run (by UUID or BDF)."""
    h = content.header
    gpus = [(g["bdf"], g.get("uuid")) for g in h.get("gpus", [])]
    known = {bdf for bdf, _ in gpus}
    gpus += sorted({(r.bdf, r.uuid) for r in content.results if r.bdf not in known})
    base = score.verdict(h.get("hostname") or "unknown", gpus, content.results)
    judged = with_reliability(base, content.results, h.get("profile"), before or {}, carry.from_header(h))
    return inventory.apply(judged, inventory.coverage(h))  # what was not tested cannot admit


def sequences_of(results: list[CycleResult], profile: dict | None,
                 carried: dict[tuple[str, str], carry.Carried] | None = None) -> dict[tuple[str, str], Sequence]:
    """Each GPU and action's sequence, replayed from the journal in cycle order: the sequential
    test is deterministic, so a killed run's report states what the test had decided. Each test
    starts from the evidence the run carried over (the journal header's ``carried``), and a
    sequence that carried evidence is there even when it ran no cycle in this run (a carried
    unreliable decision stops its action before the first one)."""
    plan = (profile or {}).get("plan") or {}
    seq = plan.get("sequential")
    params = SprtParams(**seq) if seq else None
    fixed = Cap(params.cap if params else int(plan.get("cycles") or 20))
    carried = carried or {}
    out: dict[tuple[str, str], Sequence] = {
        key: Sequence.start(key[0], key[1], params, c) for key, c in carried.items() if c.runs}
    for r in sorted(results, key=lambda r: (r.bdf, r.action, r.cycle)):
        key = (r.bdf, r.action)
        s = out.get(key) or out.setdefault(key, Sequence.start(r.bdf, r.action, params, carried.get(key)))
        if not s.done(fixed):
            s.record(r)
    for s in out.values():
        if not s.done(fixed):
            s.stopped = "unfinished"  # below the cap and undecided: a budget, a GPU taken out, or a killed run
    return out


def with_reliability(base: Verdict, results: list[CycleResult], profile: dict | None,
                     before: dict[str, str], carried: dict[tuple[str, str], carry.Carried] | None = None) -> Verdict:
    per_gpu: dict[str, list[CycleResult]] = {}
    for r in results:
        per_gpu.setdefault(r.bdf, []).append(r)
    seqs = sequences_of(results, profile, carried) if profile else {}
    gpus = []
    for g in base.gpus:
        mine = per_gpu.get(g.bdf, [])
        sequences = {a: s.to_dict() for (b, a), s in sorted(seqs.items()) if b == g.bdf}
        outcomes = {a: s["outcome"] for a, s in sequences.items()} if profile else None
        if profile and profile.get("decision") == "readmission":
            outcomes = None  # a short fixed loop proves no reliability: the class stays on the rules
        cls, why = score.reliability(mine, outcomes, before.get(g.uuid or "") or before.get(g.bdf))
        why = why + _carried_reasons(sequences)
        aer = sum(1 for r in mine for e in r.events if e.kind == "aer")
        gpus.append(replace(g, reliability=cls, reliability_reasons=why, sequences=sequences, aer_events=aer))
    node_class = score.worst(g.reliability for g in gpus) if gpus else score.UNPROVEN
    if not profile:
        return replace(base, gpus=tuple(gpus), reliability=node_class)
    if profile.get("decision") == "readmission":
        failing = [g for g in gpus if any(s["outcome"] == "failed" for s in g.sequences.values())
                   or g.reliability in (score.QUARANTINE_CLASS, score.HARDWARE, score.REBOOT_CLASS, score.LONG_JOBS_ONLY)
                   or not any(s["outcome"] == "passed" for s in g.sequences.values())]
        decision = score.KEEP_QUARANTINED if failing or not gpus else score.ADMIT
        evidence = tuple(f"{g.bdf} keeps the node quarantined: {g.reliability}; {'; '.join(g.reliability_reasons)}"
                         for g in failing) or (f"all {len(gpus)} GPUs passed the readmission loop",)
        return replace(base, gpus=tuple(gpus), decision=decision, evidence=evidence, reliability=node_class,
                       decided_by="readmission")
    decision = score.CLASS_DECISION[node_class]
    evidence = tuple(f"{g.bdf} {g.reliability}: {'; '.join(g.reliability_reasons)}" for g in gpus
                     if g.reliability != score.CHURN_SAFE) or (f"all {len(gpus)} GPUs are churn-safe",)
    return replace(base, gpus=tuple(gpus), decision=decision, evidence=evidence, reliability=node_class,
                   decided_by=profile.get("name") or "profile")


def _carried_reasons(sequences: dict[str, dict]) -> tuple[str, ...]:
    """What the GPU's tests took over from earlier runs, said beside its class."""
    out = []
    for action, s in sequences.items():
        c = s.get("carried") or {}
        said = []
        if c.get("runs"):
            said.append(f"{c['attempts']} attempts ({c['failures']} failed) carried from {c['runs']} earlier "
                        f"run(s) since {c['since']}, {s['attempts']} in this run")
        if c.get("standing") and s["outcome"] == "reliable" and (s.get("sprt") or {}).get("decision") != "reliable":
            said.append(f"reliable as decided in run {c['standing']}, and the test since has seen no failure")
        if said:
            out.append(f"{action} {s['outcome']}: " + "; ".join(said))
    return tuple(out)


def rebuild(journal_path: Path, out_dir: Path) -> Built:
    content = journal.read(journal_path)
    profile = content.header.get("profile") or {}
    history = None
    sources = [Path(x) for x in (profile.get("baseline"), profile.get("history") if profile.get("trends") or
                                 profile.get("history") else None) if x]
    if sources:
        history = history_file.load(sources, exclude_run=content.header.get("run_id"))
    before: dict[str, str] = {}
    if history and profile.get("decision") == "readmission":
        # Only an earlier run whose actions meant the same says what the GPU was before.
        same, _ = trends.same_meaning(history, result_json.semantics_of(content.header),
                                      {r.action for r in content.results})
        before = trends.before_classes(same)
    verdict = verdict_of(content, before)
    out_dir.mkdir(parents=True, exist_ok=True)
    rj, jx = out_dir / "result.json", out_dir / "junit.xml"
    document = result_json.build(content, verdict)
    if history is not None:
        trends.annotate(document, history)
    result_json.write(rj, document)
    junit.write(jx, junit.build(content, verdict))
    return Built(verdict, content, rj, jx, document)
