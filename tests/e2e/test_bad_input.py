"""Bad options and bad input: a clear message, a documented exit status, nothing half-written."""

import json

from tests.e2e.conftest import gpusoak


def test_bad_backend(tmp_path):
    done = gpusoak("run", "--backend", "bogus", "--report-dir", tmp_path, "-q")
    assert done.returncode == 2
    assert "unknown backend 'bogus'" in done.stdout + done.stderr


def test_bad_scenario_names_the_bundled_ones(tmp_path):
    done = gpusoak("run", "--backend", "sim:nope", "--report-dir", tmp_path, "-q")
    assert done.returncode == 2 and "h100-8gpu" in done.stdout + done.stderr


def test_gpu_that_is_not_there(tmp_path):
    done = gpusoak("run", "--gpus", "0000:01:00.0", "--report-dir", tmp_path, "-q")
    assert done.returncode == 2 and "no NVIDIA GPU at 0000:01:00.0" in done.stdout + done.stderr


def test_gpu_that_is_not_an_address(tmp_path):
    done = gpusoak("run", "--gpus", "../../etc", "--report-dir", tmp_path, "-q")
    assert done.returncode == 2 and "not a PCI address" in done.stdout + done.stderr


def test_zero_cycles(tmp_path):
    done = gpusoak("run", "--cycles", "0", "--report-dir", tmp_path)
    assert done.returncode == 2 and "--cycles" in done.stderr


def test_report_without_a_journal(tmp_path):
    done = gpusoak("report", tmp_path / "nothing.jsonl")
    assert done.returncode == 2 and "no journal" in done.stderr


def test_strict_exit_follows_the_decision(tmp_path):
    done = gpusoak("run", "--strict", "--cycles", "20", "--gpus", "0000:9a:00.0", "--report-dir", tmp_path, "-q",
                   "--sim-load", "in-process")
    assert done.returncode == 1
    assert json.loads((tmp_path / "result.json").read_text())["node"]["decision"] == "quarantine"


def test_a_device_that_is_not_there(tmp_path):
    done = gpusoak("run", "--devices", "0000:01:00.0", "--report-dir", tmp_path, "-q")
    assert done.returncode == 2 and "no PCI function at 0000:01:00.0" in done.stdout + done.stderr
