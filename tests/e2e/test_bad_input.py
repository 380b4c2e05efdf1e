"""Bad options and bad input: a clear message, a documented exit status, nothing half-written."""

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO, gpusoak


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


ONE_GPU = 'name = "one"\nhostname = "sim-one"\nseed = 1\n[[gpu]]\nbdf = "0000:18:00.0"\n'
NO_LOAD = ("--load-seconds", "0", "--post-check-seconds", "0")  # the runs' folders are the point, not load


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_is_left_alone(tmp_path):
    # It used to append its cycles under the first run's id and decision, without a word.
    node = tmp_path / "one.toml"
    node.write_text(ONE_GPU)
    out = tmp_path / "r"
    first = gpusoak("run", "--backend", f"sim:{node}", "--cycles", "1", *NO_LOAD, "--report-dir", out, "-q")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    journal, result = (out / "journal.jsonl").read_bytes(), (out / "result.json").read_bytes()
    again = gpusoak("run", "--backend", f"sim:{node}", "--cycles", "1", *NO_LOAD, "--report-dir", out, "-q")
    assert again.returncode == 2 and f"--report-dir {out}: {out} already holds run" in again.stderr, again.stderr
    assert (out / "journal.jsonl").read_bytes() == journal and (out / "result.json").read_bytes() == result
    # The pytest entry point refuses it the same way, in its own option names.
    done = subprocess.run([sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider",
                           f"--gpusoak-backend=sim:{node}", f"--gpusoak-report-dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 4 and "--gpusoak-resume" in done.stderr and "already holds run" in done.stderr
    assert (out / "journal.jsonl").read_bytes() == journal


def test_the_pytest_entry_point_checks_options_with_the_same_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider",
                           "--gpusoak-write-timeout=0", f"--gpusoak-report-dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 4, done.stdout[-2000:]
    assert "--gpusoak-write-timeout 0.0: must be more than 0 seconds" in done.stderr
    assert not (tmp_path / "journal.jsonl").exists()


def test_resume_continues_a_stopped_run_with_its_missing_cycles_only(tmp_path):
    node = tmp_path / "one.toml"
    node.write_text(ONE_GPU)
    out = tmp_path / "r"
    args = ("run", "--backend", f"sim:{node}", *NO_LOAD, "--cycles", "3", "--report-dir", out, "-q")
    assert gpusoak(*args).returncode == 0
    path = out / "journal.jsonl"
    # As a run stopped after its first cycle leaves it (SIGTERM: the session ends, the node is put
    # back, the restore record is last): cycles 2 and 3 are not in it.
    kept = [r for r in _records(path) if not (r["type"] == "cycle" and r["cycle"] > 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    run_id = kept[0]["run_id"]

    other = gpusoak(*args[:-3], "--cycles", "4", "--report-dir", out, "--resume", run_id, "-q")
    assert other.returncode == 2 and "cycles 3 in the journal, 4 now" in other.stdout + other.stderr

    done = gpusoak(*args, "--resume", run_id)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    records = _records(path)
    assert [r["type"] for r in records].count("run") == 1 and records[0]["run_id"] == run_id
    assert [r["cycle"] for r in records if r["type"] == "cycle"] == [1, 2, 3]
    assert [r["cycles_before"] for r in records if r["type"] == "resume"] == [1]
    result = json.loads((out / "result.json").read_text())
    assert result["run"]["run_id"] == run_id and result["run"]["cycles_recorded"] == 3

    finished = gpusoak(*args, "--resume", run_id)
    assert finished.returncode == 2 and "nothing to continue" in finished.stdout + finished.stderr


def test_a_real_node_without_a_gpu_is_not_a_verdict(tmp_path):
    from gpusoak.host.sysfs import Sysfs

    if Sysfs("/sys").nvidia_gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    # It used to say retest, exit 0: a node with nothing to test looked like one to test again.
    done = gpusoak("run", "--backend", "real", "--report-dir", tmp_path / "r", "-q")
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr
    assert "no NVIDIA GPU on" in done.stderr and "nothing to test" in done.stderr
    assert not (tmp_path / "r" / "journal.jsonl").exists() and not (tmp_path / "r" / "result.json").exists()
