"""`gpusoak fleet` and the metrics textfile: roll-up over many result files (bad ones skipped),
the outputs, the scheduler changes (Slurm and Kubernetes), and --apply through the commands seam."""

import csv
import json
import os
import stat

from prometheus_client.parser import text_string_to_metric_families

from gpusoak import fleet, metrics
from tests.e2e.conftest import gpusoak


def _result(node, decision, cls, started="2026-11-22T00:00:00Z", run="r1", decided_by="acceptance", failures=0,
            gpu_class=None):
    gpus = [{"bdf": "0000:18:00.0", "uuid": "GPU-a", "class": "pass",
             "reliability": {"class": "churn-safe", "reasons": ["flr: reliable by the sequential test"]},
             "actions": {"flr": {"attempts": 150, "successes": 150, "lower_bound": 0.975,
                                 "recovery_s": {"p50": 0.8, "p95": 1.7, "max": 1.9}}}},
            {"bdf": "0000:3a:00.0", "uuid": "GPU-b", "class": "fail" if failures else "pass",
             "reliability": {"class": gpu_class or cls, "reasons": ["flr cycle 4: flr_not_ready"]},
             "actions": {"flr": {"attempts": 150, "successes": 150 - failures, "lower_bound": 0.9,
                                 "recovery_s": {"p50": 0.9, "p95": 2.0, "max": None}}}}]
    return {"schema_version": "1.1", "run": {"run_id": run, "started_at": started},
            "node": {"hostname": "h", "name": node, "decision": decision, "decided_by": decided_by,
                     "reliability": cls, "evidence": []}, "gpus": gpus}


def _write(root, rel, doc):
    path = root / rel / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_rollup_keeps_each_nodes_latest_result_and_skips_bad_files(tmp_path):
    _write(tmp_path, "run1/node1", _result("node1", "admit", "churn-safe"))
    _write(tmp_path, "run2/node1", _result("node1", "quarantine", "quarantine", started="2026-11-23T00:00:00Z",
                                           run="r2", failures=3))
    _write(tmp_path, "run1/node2", _result("node2", "admit", "churn-safe"))
    _write(tmp_path, "run1/broken", '{"schema_version": "1.1", "node": {"decis')  # cut short
    _write(tmp_path, "run1/partial", json.dumps({"node": {"hostname": "x"}, "gpus": []}))
    _write(tmp_path, "run1/foreign", json.dumps([1, 2, 3]))
    _write(tmp_path, "run1/evil", _result("--all State=RESUME", "quarantine", "quarantine"))  # never an argument
    _write(tmp_path, "run1/odd", json.dumps({"node": {"name": "odd", "decision": "admit"}, "gpus": [5]}))
    r = fleet.collect([tmp_path])
    assert [row.node for row in r.rows] == ["node1", "node2"]
    assert r.rows[0].decision == "quarantine" and r.rows[0].failures == 3 and r.rows[0].worst_gpu == "0000:3a:00.0"
    assert r.files == 8 and r.superseded == 1 and len(r.problems) == 5
    assert any("is not a plain node name" in p for p in r.problems)
    assert any("broken/result.json: skipped (JSONDecodeError" in p for p in r.problems)
    assert any("partial file" in p for p in r.problems)


def test_outputs_json_csv_and_a_self_contained_html(tmp_path):
    for i, (d, c) in enumerate([("admit", "churn-safe"), ("quarantine", "quarantine"), ("retest", "inconclusive")]):
        _write(tmp_path / "in", f"n{i}", _result(f"n{i}", d, c))
    paths = fleet.write(fleet.collect([tmp_path / "in"]), tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["by_class"] == {"churn-safe": 1, "inconclusive": 1, "quarantine": 1}
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["node"] for r in rows] == ["n0", "n1", "n2"] and rows[1]["reliability"] == "quarantine"
    html = paths["html"].read_text()
    assert 'id="fleet-by-class"' in html and html.count("<tr>") == 4 and "http" not in html


def test_slurm_drains_quarantined_nodes_and_resumes_only_its_own_drains():
    rows = [fleet.row_of(_result("n1", "quarantine", "quarantine", failures=2), "x"),
            fleet.row_of(_result("n2", "admit", "inconclusive", decided_by="readmission"), "x"),
            fleet.row_of(_result("n3", "admit", "inconclusive", decided_by="readmission"), "x"),
            fleet.row_of(_result("n4", "admit", "churn-safe"), "x")]
    current = {"n1": None, "n2": "gpusoak: quarantine quarantine 0000:3a:00.0: x", "n3": "bad DIMM (ops)", "n4": None}
    changes = {c.node: c for c in fleet.slurm_changes(rows, current)}
    assert changes["n1"].what == "drain" and changes["n1"].argv[:4] == ("scontrol", "update", "NodeName=n1", "State=DRAIN")
    assert changes["n1"].argv[4].startswith("Reason=gpusoak: quarantine quarantine 0000:3a:00.0: flr cycle 4")
    assert changes["n2"].what == "resume" and changes["n2"].argv[-1] == "State=RESUME"
    assert changes["n3"].what == "none" and "someone else" in changes["n3"].why
    assert changes["n4"].what == "none"  # an acceptance admit does not resume anything


def test_a_node_admitted_for_long_jobs_only_is_labelled_never_resumed_untainted_or_drained():
    row = fleet.row_of(_result("n5", "admit_long_jobs_only", "long-jobs-only", failures=1), "x")
    (slurm,) = fleet.slurm_changes([row], {"n5": "gpusoak: quarantine quarantine 0000:3a:00.0: x"})
    assert slurm.what == "none" and slurm.argv == ()  # only a readmission's admit lifts a quarantine
    assert "long jobs only" in slurm.why and "slurm.conf" in slurm.why  # where its node feature belongs
    (label,) = fleet.k8s_changes([row])
    assert label.argv == ("kubectl", "label", "node", "n5", "gpusoak.io/reset-class=long-jobs-only", "--overwrite")
    assert "NotIn" in label.why  # how pods that churn GPUs are kept off it


def test_kubernetes_labels_every_node_and_taints_quarantine_with_the_patch_shown():
    rows = [fleet.row_of(_result("gpu-7", "quarantine", "hardware-investigation", failures=1), "x"),
            fleet.row_of(_result("gpu-8", "admit", "inconclusive", decided_by="readmission"), "x")]
    changes = fleet.k8s_changes(rows)
    label, taint, kept8, untaint = changes
    # A readmission's three cycles prove no reliability: the class a full run set stays on the node.
    assert kept8.what == "none" and not kept8.argv
    assert label.argv == ("kubectl", "label", "node", "gpu-7", "gpusoak.io/reset-class=hardware-investigation", "--overwrite")
    assert label.patch == {"metadata": {"labels": {"gpusoak.io/reset-class": "hardware-investigation"}}}
    assert taint.argv[4] == "gpusoak.io/quarantine=hardware-investigation.0000-3a-00.0:NoSchedule"
    assert taint.patch["spec"]["taints"][0] == {"key": "gpusoak.io/quarantine", "value": "hardware-investigation.0000-3a-00.0",
                                                "effect": "NoSchedule"}
    assert untaint.argv == ("kubectl", "taint", "node", "gpu-8", "gpusoak.io/quarantine:NoSchedule-")
    long = fleet.row_of(_result("n", "quarantine", "x" * 80), "x")
    assert len(fleet.taint_value(long)) <= 63


def test_apply_runs_kubectl_with_exactly_the_shown_arguments(tmp_path):
    log = tmp_path / "kubectl.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    _write(tmp_path / "in", "gpu-7", _result("gpu-7", "quarantine", "quarantine", failures=1))
    env_path = f"{bin_dir}:{os.environ['PATH']}"
    done = gpusoak("fleet", tmp_path / "in", "--out", tmp_path / "out", "--scheduler", "k8s", "--apply",
                   env={**os.environ, "PATH": env_path})
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "label node gpu-7 gpusoak.io/reset-class=quarantine --overwrite",
        "taint node gpu-7 gpusoak.io/quarantine=quarantine.0000-3a-00.0:NoSchedule --overwrite"]
    assert "patch: {\"spec\": {\"taints\"" in done.stdout
    done = gpusoak("fleet", tmp_path / "nowhere")
    assert done.returncode == 2 and "no such folder" in done.stderr


def test_the_metrics_textfile_parses_as_prometheus_exposition_format(tmp_path):
    doc = _result("gpu-7", "quarantine", "quarantine", failures=2)
    path = tmp_path / "gpusoak.prom"
    metrics.write(path, doc)
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert {"gpusoak_cycles_attempted", "gpusoak_cycles_failed", "gpusoak_success_lower_bound",
            "gpusoak_recovery_seconds", "gpusoak_gpu_reliability_class", "gpusoak_node_reliability_class",
            "gpusoak_node_decision", "gpusoak_last_run_timestamp_seconds"} <= set(families)
    failed = {(s.labels["gpu"], s.labels["action"]): s.value for s in families["gpusoak_cycles_failed"].samples}
    assert failed == {("0000:18:00.0", "flr"): 0, ("0000:3a:00.0", "flr"): 2}
    q = {(s.labels["gpu"], s.labels["quantile"]): s.value for s in families["gpusoak_recovery_seconds"].samples}
    assert q[("0000:18:00.0", "0.95")] == 1.7 and ("0000:3a:00.0", "1") not in q  # no max: not written
    node = {s.labels["class"]: s.value for s in families["gpusoak_node_reliability_class"].samples}
    assert node["quarantine"] == 1 and sum(node.values()) == 1
    assert not list(tmp_path.glob(".*tmp"))  # written atomically


def test_label_values_are_escaped(tmp_path):
    doc = _result('we"ird\\node\n', "admit", "churn-safe")
    families = list(text_string_to_metric_families(metrics.render(doc)))
    nodes = {s.labels["node"] for f in families for s in f.samples}
    assert nodes == {'we"ird\\node\n'}


def test_metrics_of_a_file_that_is_not_a_result_is_a_clear_error(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"node": {}, "gpus": [{"bdf": "x", "actions": {"flr": 3}}]}))
    done = gpusoak("metrics", bad)
    assert done.returncode == 2 and "is not a gpusoak result.json" in done.stderr and "Traceback" not in done.stderr


def test_a_subset_or_a_readmission_leaves_the_reset_class_label_a_full_run_set():
    # Acceptance labelled the node long-jobs-only (the guard that keeps churn off it); a later run
    # on one GPU, a retest, or the readmission after a reboot must not overwrite that label.
    for decision, decided_by in (("subset", "acceptance"), ("retest", "acceptance"), ("admit", "readmission")):
        row = fleet.row_of(_result("gpu-9", decision, "inconclusive", decided_by=decided_by), "x")
        assert [c.what for c in fleet.k8s_changes([row]) if c.what == "label"] == [], decision
    full = fleet.row_of(_result("gpu-9", "admit_long_jobs_only", "long-jobs-only"), "x")
    assert [c.argv[4] for c in fleet.k8s_changes([full]) if c.what == "label"] == ["gpusoak.io/reset-class=long-jobs-only"]
