"""junit.xml from the journal: one testcase per cycle, facts as properties.

The shape is the JUnit XML that Jenkins' junit plugin, GitLab and pytest's ``xunit1`` family read:
Surefire's structure with ``<properties>`` allowed inside ``<testcase>`` (pytest's
``record_property`` writes them there). ``junit.xsd`` beside this file states it; the tests
validate every junit.xml gpusoak writes against it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from gpusoak.files import write_atomically
from gpusoak.journal import JournalContent
from gpusoak.model import FAILED, HUNG, INCONCLUSIVE, REFUSED, SKIPPED, CycleResult, Verdict


def _props(parent: ET.Element, items: list[tuple[str, object]]) -> None:
    props = ET.SubElement(parent, "properties")
    for name, value in items:
        ET.SubElement(props, "property", name=name, value="" if value is None else str(value))


def _case(suite: ET.Element, r: CycleResult) -> None:
    case = ET.SubElement(suite, "testcase", classname=f"gpusoak.{r.action}",
                         name=f"{r.bdf} cycle {r.cycle}", time=f"{r.duration_s:.3f}")
    _props(case, [("bdf", r.bdf), ("uuid", r.uuid), ("action", r.action), ("cycle", r.cycle),
                  ("outcome", r.outcome),
                  ("recovery_s", None if r.recovery_s is None else f"{r.recovery_s:.6f}"),
                  ("failure_reason", r.reason)])
    if r.outcome == FAILED:
        ET.SubElement(case, "failure", message=r.reason or "failed", type=r.reason or "failed").text = r.explain()
    elif r.outcome == HUNG:
        ET.SubElement(case, "error", message="hung", type="hung").text = r.explain()
    elif r.outcome in (REFUSED, SKIPPED, INCONCLUSIVE):
        ET.SubElement(case, "skipped", message=f"{r.reason}: {r.findings[0].detail}" if r.findings else r.outcome)


def build(content: JournalContent, verdict: Verdict) -> ET.ElementTree:
    h = content.header
    results = content.results
    failures = sum(r.outcome == FAILED for r in results)
    errors = sum(r.outcome == HUNG for r in results)
    skipped = sum(r.outcome in (REFUSED, SKIPPED, INCONCLUSIVE) for r in results)
    total_s = sum(r.duration_s for r in results)
    counts = dict(tests=str(len(results)), failures=str(failures), errors=str(errors),
                  skipped=str(skipped), time=f"{total_s:.3f}")
    root = ET.Element("testsuites", name="gpusoak", **counts)
    suite = ET.SubElement(root, "testsuite", name=f"gpusoak.{verdict.hostname}",
                          timestamp=str(h.get("started_at") or ""), hostname=verdict.hostname, **counts)
    _props(suite, [("node", verdict.hostname), ("kernel", h.get("kernel")), ("driver", h.get("driver")),
                   ("backend", h.get("backend")), ("run_id", h.get("run_id")),
                   ("decision", verdict.decision)]
           + [(f"class {g.bdf}", g.gpu_class) for g in verdict.gpus])
    for r in results:
        _case(suite, r)
    ET.indent(root)
    return ET.ElementTree(root)


def write(path: Path, tree: ET.ElementTree) -> None:
    write_atomically(path, ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True))
