"""bench/gpu_smoke.sh, as it runs on a GPU machine, here on one without: it reports what it could not
read instead of failing, and asks nvidia-smi only read-only questions (it must never reset,
reconfigure or change MIG on a lent machine)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FAKE_SMI = """#!/bin/sh
echo "$*" >> "$SMI_LOG"
case "$*" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-5a1f00d0-0018-4c3b-9e2a-0c0ffee00000)" ;;
  -q) echo "Driver Version : 580.159.03" ;;
  --query-gpu=*) echo "00000000:18:00.0, GPU-5a1f00d0-0018-4c3b-9e2a-0c0ffee00000, NVIDIA H200, 580.159.03, [N/A], Enabled, Default" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def test_the_smoke_says_what_it_could_not_read_and_asks_only_read_only_questions(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SMI_LOG": str(tmp_path / "smi.log"),
           "PYTHON": sys.executable, "LOAD_SECONDS": "0"}
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_smoke.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.txt").read_text()
    assert "ok      nvidia-smi-gpus" in summary
    # No NVML here: each query child says it could not look, naming why.
    assert "could not nvml-health-00000000:18:00.0" in summary and "NVML" in summary
    assert "could not load" in summary  # no cupy, no GPU: the load child's own answer
    assert "done:" in summary
    asked = (tmp_path / "smi.log").read_text().splitlines()
    assert asked and all(a in ("-L", "-q") or a.startswith("--query-gpu=") for a in asked), asked
