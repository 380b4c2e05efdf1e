"""The main job end to end: `gpusoak run` on the default simulated node, and what its reports say."""

import html
import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict

import jsonschema
import xmlschema

from gpusoak.report.result_json import schema
from gpusoak.sim import scenario as scenarios
from tests.e2e.conftest import REPO, gpusoak

JUNIT_XSD = REPO / "gpusoak" / "report" / "junit.xsd"


def test_verdict_matches_the_scenarios_ground_truth(default_run):
    out, done, result = default_run
    expected = {str(g.bdf): g.expect for g in scenarios.load(None).gpus}
    assert {g["bdf"]: g["class"] for g in result["gpus"]} == expected
    assert result["node"]["decision"] == "quarantine"
    assert result["run"]["actions_semantics"]["flr"] == 2  # unbind, FLR, bind back
    assert "decision quarantine" in done.stdout
    flaky = next(g for g in result["gpus"] if g["class"] == "fail")
    assert flaky["bdf"] == "0000:9a:00.0" and "flr_not_ready" in " ".join(flaky["evidence"])
    for g in result["gpus"]:
        flr = g["actions"]["flr"]
        assert flr["attempts"] == 20
        if g["class"] == "pass":
            assert flr["successes"] == 20 and flr["lower_bound"] > 0.8
            assert 0 < flr["recovery_s"]["p50"] <= flr["recovery_s"]["p95"] <= flr["recovery_s"]["max"]


def test_result_json_validates_against_its_schema(default_run):
    _, _, result = default_run
    jsonschema.validate(result, schema())
    broken = json.loads(json.dumps(result))
    broken["node"]["decision"] = "probably fine"
    try:
        jsonschema.validate(broken, schema())
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema must reject an unknown decision")


def test_junit_validates_and_agrees(default_run):
    out, _, result = default_run
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(out / "junit.xml"))
    root = ET.parse(out / "junit.xml").getroot()
    suite = root.find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["decision"] == result["node"]["decision"] == "quarantine"
    assert props["node"] == "sim-h100-01" and props["kernel"] == "6.8.0-48-generic" and props["driver"] == "570.124.06"
    cases = suite.findall("testcase")
    assert len(cases) == 160
    failed_by_gpu = defaultdict(int)
    for case in cases:
        cp = {p.get("name"): p.get("value") for p in case.find("properties")}
        assert set(cp) >= {"bdf", "uuid", "action", "cycle", "recovery_s", "failure_reason"}
        if case.find("failure") is not None:
            failed_by_gpu[cp["bdf"]] += 1
            assert cp["failure_reason"] == case.find("failure").get("type") == "flr_not_ready"
            assert cp["recovery_s"] == ""
    flaky = next(g for g in result["gpus"] if g["class"] == "fail")
    assert dict(failed_by_gpu) == {flaky["bdf"]: 20 - flaky["actions"]["flr"]["successes"]}


def test_html_is_self_contained_and_agrees(default_run):
    out, _, result = default_run
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page), "the report must open with no network"
    assert not re.search(r'<(?:script|link|img)[^>]+(?:src|href)="(?!data:)[^"]+', page)
    summary = page[page.index('<div id="gpusoak-summary">'):]
    assert '<span id="gpusoak-decision"' in summary and ">quarantine</span>" in summary
    table = summary[summary.index('<table id="gpusoak-gpus"'):]
    reliability = summary[summary.index('<table id="gpusoak-reliability-table"'):]
    for g in result["gpus"]:
        row = re.search(rf"<tr><td>{re.escape(g['bdf'])}</td>.*?</tr>", table).group(0)
        assert f">{g['class']}</td>" in row
        row = re.search(rf"<tr><td>{re.escape(g['bdf'])}</td>.*?</tr>", reliability).group(0)
        assert f">{g['reliability']['class']}</td>" in row
    blob = json.loads(html.unescape(re.search(r'data-jsonblob="([^"]*)"', page).group(1)))
    outcomes = [t["result"] for tests in blob["tests"].values() for t in tests]
    assert outcomes.count("Failed") == 20 - next(
        g for g in result["gpus"] if g["class"] == "fail")["actions"]["flr"]["successes"]
    assert outcomes.count("Passed") == sum(g["actions"]["flr"]["successes"] for g in result["gpus"])


def test_reports_rebuild_from_the_journal_identically(default_run, tmp_path):
    out, _, result = default_run
    done = gpusoak("report", out / "journal.jsonl", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    again = json.loads((tmp_path / "result.json").read_text())
    assert again["node"] == result["node"] and again["gpus"] == result["gpus"]
    assert (tmp_path / "report.html").exists()
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(tmp_path / "junit.xml"))


def test_pytest_suites_is_the_same_entry_point(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "suites", "-q",
                           "--gpusoak-cycles=2", f"--gpusoak-report-dir={tmp_path}",
                           "--gpusoak-gpus=0000:18:00.0,0000:2a:00.0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "4 passed" in done.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    # 2 clean cycles are too few for the 0.80 lower bound: the evidence is thin, not good.
    assert [g["class"] for g in result["gpus"]] == ["inconclusive", "inconclusive"]
    assert result["node"]["decision"] == "retest"
    assert (tmp_path / "report.html").exists() and (tmp_path / "junit.xml").exists()
