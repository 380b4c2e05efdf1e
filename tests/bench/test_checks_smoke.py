"""bench/bench_checks.py in its smoke form: the load's checks on numpy at a small size, clean
products passing them, and the cost model the full benchmark records (bench/RESULTS.md)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_checks_need_no_host_product_and_pass_clean_products():
    done = subprocess.run([sys.executable, "bench/bench_checks.py", "--n", "512", "--old-n", "128"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["within_deadline"] and set(doc["kinds"]) == {"float16-exact", "float16", "float32"}
    assert doc["kinds"]["float16-exact"]["k"] == 512 and doc["old_int64_reference"]["at_n_s"] > 0
