"""A run killed with SIGKILL mid-soak loses no finished cycle, and its reports rebuild."""

import json
import signal
import subprocess
import sys
import time

from gpusoak import journal
from tests.e2e.conftest import REPO, gpusoak

SLOW_NODE = """\
name = "slow-node"
hostname = "sim-slow"
seed = 3
time_scale = 0.02   # each simulated second takes 20 ms: slow enough to kill mid-soak

[[gpu]]
bdf = "0000:18:00.0"

[[gpu]]
bdf = "0000:9a:00.0"
profile = "flaky-flr"
p = 0.3
"""


def _cycle_lines(path):
    try:
        return sum('"type":"cycle"' in line for line in path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_sigkill_mid_soak_loses_no_finished_cycle(tmp_path):
    scenario = tmp_path / "slow.toml"
    scenario.write_text(SLOW_NODE)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gpusoak.cli", "run", "--backend", f"sim:{scenario}",
                             "--cycles", "500", "--report-dir", str(out), "-q"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while _cycle_lines(path) < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the soak must still have been running when killed"

    content = journal.read(path)
    recorded = len(content.results)
    assert recorded >= 12
    # Every line that was complete is a readable cycle; only a line being written may be cut.
    assert len(content.problems) <= 1
    assert all("cut short" in p for p in content.problems)
    assert not (out / "result.json").exists()

    done = gpusoak("report", path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["run"]["cycles_recorded"] == recorded
    outcomes = result["run"]["outcomes"]
    assert sum(outcomes.values()) == recorded
    attempts = sum(a["attempts"] for g in result["gpus"] for a in g["actions"].values())
    assert attempts == outcomes["recovered"] + outcomes["failed"] + outcomes["hung"]
    assert (out / "report.html").exists() and (out / "junit.xml").exists()
