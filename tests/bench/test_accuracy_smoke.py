"""bench/bench_accuracy.py in its seeded smoke form (about 20 GPUs): the verdict against the known
truth of each simulated GPU, through `gpusoak run --profile acceptance`. It asserts gross errors
only (a sticky fault admitted, a rate far above its target); the full benchmark's figures are in
bench/RESULTS.md."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_accuracy_smoke_admits_no_sticky_fault_and_quarantines_no_healthy_gpu(tmp_path):
    out = tmp_path / "accuracy.json"
    done = subprocess.run([sys.executable, "bench/bench_accuracy.py", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["gpus"] == 20
    truths = set(summary["matrix"])
    assert {"healthy", "sticky"} <= truths  # the seed draws both kinds the rules must tell apart
    assert summary["unsafe_admits_sticky"]["count"] == 0
    assert summary["false_quarantines"]["count"] == 0
    assert summary["matrix"]["healthy"].get("churn-safe", 0) >= 10  # most healthy GPUs shown reliable
