"""Trends against a synthetic history: each sign of getting worse is found, a steady node is not
flagged, and broken history files are skipped with a reason."""

import json

from gpusoak import history as history_file
from gpusoak.verdict import trends


def _doc(run, started, attempts, failures, p95, aer=0, cls="churn-safe", uuid="GPU-1"):
    return {"schema_version": "1.1", "run": {"run_id": run, "started_at": started},
            "gpus": [{"bdf": "0000:18:00.0", "uuid": uuid, "aer_events": aer,
                      "reliability": {"class": cls, "reasons": []},
                      "actions": {"flr": {"attempts": attempts, "successes": attempts - failures, "lower_bound": 0.9,
                                          "recovery_s": {"p50": p95 / 2, "p95": p95, "max": p95}}}}]}


def _history(tmp_path, docs):
    folder = tmp_path / "history"
    folder.mkdir()
    for d in docs:
        (folder / f"{d['run']['run_id']}.json").write_text(json.dumps(d))
    return history_file.load([folder])


NIGHTS = [_doc(f"n{i}", f"2026-11-{i + 1:02d}T00:00:00Z", 300, 0 if i % 5 else 1, 1.0 + 0.05 * (i % 3), aer=2)
          for i in range(10)]


def test_a_steady_node_has_no_trend(tmp_path):
    doc = trends.annotate(_doc("now", "2026-11-21T00:00:00Z", 300, 0, 1.05, aer=3), _history(tmp_path, NIGHTS))
    g = doc["gpus"][0]
    assert g["trends"] == [] and len(g["history"]) == 11 and doc["trends"]["worsening"] == []


def test_rising_failures_p95_aer_and_a_falling_class_are_each_found(tmp_path):
    now = _doc("now", "2026-11-21T00:00:00Z", 300, 9, 2.4, aer=60, cls="long-jobs-only")
    doc = trends.annotate(now, _history(tmp_path, NIGHTS))
    found = " | ".join(doc["gpus"][0]["trends"])
    assert "failure rate rising: 9/300" in found and "recovery p95 rising: 2.40 s" in found
    assert "AER rate rising" in found and "class falling: long-jobs-only, it was churn-safe" in found
    assert doc["trends"]["worsening"] == ["0000:18:00.0"]


def test_one_failure_after_a_clean_history_is_not_yet_a_trend(tmp_path):
    clean = [_doc(f"c{i}", f"2026-11-0{i + 1}T00:00:00Z", 300, 0, 1.0) for i in range(3)]
    doc = trends.annotate(_doc("now", "2026-11-21T00:00:00Z", 300, 1, 1.0), _history(tmp_path, clean))
    assert not any(t.startswith("failure rate") for t in doc["gpus"][0]["trends"])


def test_broken_history_files_are_skipped_with_a_reason(tmp_path):
    folder = tmp_path / "history"
    folder.mkdir()
    (folder / "a.json").write_text("{ not json")
    (folder / "b.json").write_text(json.dumps({"something": "else"}))
    (folder / "c.json").write_text(json.dumps(NIGHTS[0]))
    odd = json.loads(json.dumps(NIGHTS[1]))
    odd["gpus"][0]["actions"]["flr"] = 5  # the right shape outside, nonsense inside
    (folder / "d.json").write_text(json.dumps(odd))
    h = history_file.load([folder, tmp_path / "missing.json"])
    assert len(h.runs) == 1 and len(h.problems) == 4
    assert any("a.json: skipped" in p for p in h.problems) and any("no such file" in p for p in h.problems)


def test_the_run_itself_is_not_its_own_history(tmp_path):
    h = _history(tmp_path, NIGHTS[:2] + [_doc("now", "2026-11-21T00:00:00Z", 300, 0, 1.0)])
    assert [d["run"]["run_id"] for d in history_file.load([tmp_path / "history"], exclude_run="now").runs] == ["n0", "n1"]
    assert len(h.runs) == 3


def test_binomial_tail():
    assert trends.binomial_tail(0, 10, 0.1) == 1.0
    assert abs(trends.binomial_tail(1, 10, 0.1) - (1 - 0.9 ** 10)) < 1e-12
    assert trends.binomial_tail(10, 10, 0.5) == 0.5 ** 10


def _meaning(doc, **versions):
    doc["run"]["actions_semantics"] = versions
    return doc


def test_runs_where_an_action_meant_something_else_are_not_compared(tmp_path):
    # The history ran flr 1 (reset under the bound driver; files before 1.2 name no version); this
    # run's flr 2 unbinds first. Its worse numbers are a different action's, not a regression.
    now = _meaning(_doc("now", "2026-11-21T00:00:00Z", 300, 9, 2.4, aer=60, cls="long-jobs-only"), flr=2)
    doc = trends.annotate(now, _history(tmp_path, NIGHTS))
    assert doc["gpus"][0]["trends"] == [] and doc["trends"]["worsening"] == []
    assert doc["trends"]["earlier_runs"] == 0 and len(doc["gpus"][0]["history"]) == 1
    assert doc["trends"]["not_compared"][0] == {"run_id": "n0", "actions": {"flr": {"then": 1, "now": 2}}}
    assert len(doc["trends"]["not_compared"]) == 10


def test_runs_of_the_same_meaning_are_still_compared(tmp_path):
    nights = [_meaning(json.loads(json.dumps(d)), flr=2) for d in NIGHTS[5:]]
    now = _meaning(_doc("now", "2026-11-21T00:00:00Z", 300, 9, 2.4, aer=60, cls="long-jobs-only"), flr=2, rebind=1)
    doc = trends.annotate(now, _history(tmp_path, NIGHTS[:5] + nights))
    assert doc["trends"]["earlier_runs"] == 5 and [n["run_id"] for n in doc["trends"]["not_compared"]] == \
        ["n0", "n1", "n2", "n3", "n4"]
    assert any(t.startswith("failure rate rising") for t in doc["gpus"][0]["trends"])
