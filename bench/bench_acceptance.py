"""Benchmark (issue 14, item 5): the wall time of the acceptance profile on the default simulated
node (h100-8gpu: 8 GPUs, one flaky), with a real node's loads (20 s before each cycle, a 5 s
post-check, simulated time) and the 10 s settle window, through `gpusoak run` as a user runs it.

Run:  python bench/bench_acceptance.py [--all-actions]

By default the scenario's own actions (flr): each healthy GPU takes the sequential test's 150
cycles. With --all-actions, every action the node supports (the profile's "supported"). Prints the
wall time, the CPU time of the run, the cycles and the decision. Target: under two minutes on 2
cores for the scenario's actions.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all-actions", action="store_true", help="every supported action, not the scenario's flr")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpusoak-bench-acceptance-") as tmp:
        out = Path(tmp) / "r"
        cmd = [sys.executable, "-m", "gpusoak.cli", "run", "--profile", "acceptance", "--report-dir", str(out), "-q"]
        if not args.all_actions:
            cmd += ["--actions", "flr"]
        start = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.monotonic() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            print(done.stdout[-2000:] + done.stderr[-2000:])
            return 1
        doc = json.loads((out / "result.json").read_text())
    actions = doc["run"]["profile"]["plan"]["actions"]
    print(f"acceptance on h100-8gpu, actions {','.join(actions)}: {wall:.1f} s wall, "
          f"{usage.ru_utime + usage.ru_stime:.1f} s CPU, {doc['run']['cycles_recorded']} cycles, "
          f"decision {doc['node']['decision']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
