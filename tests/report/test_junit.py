import xml.etree.ElementTree as ET
from pathlib import Path

import xmlschema

from gpusoak.journal import JournalContent
from gpusoak.model import CycleResult, Finding
from gpusoak.report import junit
from gpusoak.report.build import verdict_of

XSD = xmlschema.XMLSchema(str(Path(__file__).resolve().parents[2] / "gpusoak" / "report" / "junit.xsd"))


def _r(cycle, outcome, reason=None):
    return CycleResult(run_id="r", bdf="0000:65:00.0", uuid="GPU-1", action="flr", cycle=cycle, outcome=outcome,
                       started_at="2026-11-21T00:00:00Z", duration_s=0.25,
                       recovery_s=0.25 if outcome == "recovered" else None,
                       findings=(Finding(reason, "detail & <more>"),) if reason else ())


def test_every_outcome_maps_to_valid_junit(tmp_path):
    content = JournalContent({"run_id": "r", "hostname": "n1", "kernel": "6.12.0", "driver": "570.124.06",
                              "gpus": [{"bdf": "0000:65:00.0", "uuid": "GPU-1"}]},
                             [_r(1, "recovered"), _r(2, "failed", "flr_not_ready"), _r(3, "hung", "hung"),
                              _r(4, "refused", "not_root"), _r(5, "skipped", "out_of_service")])
    path = tmp_path / "junit.xml"
    junit.write(path, junit.build(content, verdict_of(content)))
    XSD.validate(str(path))
    suite = ET.parse(path).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("5", "1", "1", "2")
    kinds = [next((c.tag for c in case if c.tag != "properties"), "pass") for case in suite.findall("testcase")]
    assert kinds == ["pass", "failure", "error", "skipped", "skipped"]


def test_the_schema_rejects_what_ci_tools_would_reject(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites><testsuite name="x" tests="one" failures="0" errors="0"/></testsuites>')
    assert not XSD.is_valid(str(bad))
    bad.write_text('<testsuites><testsuite name="x" tests="1" failures="0" errors="0">'
                   '<testcase classname="c"/></testsuite></testsuites>')  # testcase without a name
    assert not XSD.is_valid(str(bad))
