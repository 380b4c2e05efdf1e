"""Benchmark (issue 8): `gpusoak fleet` over 10,000 generated result.json files.

Run:  python bench/bench_fleet.py [--nodes 10000]

Generates one result.json per node (8 GPUs, 6 actions each, sequences and reliability as a profile
run writes them: about 20 KB, the size of a real one), then times `gpusoak fleet DIR --out OUT` in a
child process and reads its peak RSS. Targets: under 10 s and under 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACTIONS = ("flr", "bus_reset", "gpu_reset", "rebind", "remove_rescan", "vfio_cycle")
CLASSES = ("churn-safe",) * 90 + ("long-jobs-only",) * 3 + ("inconclusive",) * 3 + ("quarantine",) * 2 + \
    ("hardware-investigation", "reboot-required")


def result(i: int, rng: random.Random) -> dict:
    cls = rng.choice(CLASSES)
    gpus = []
    for g in range(8):
        bad = cls != "churn-safe" and g == 3
        actions = {a: {"attempts": 150, "successes": 149 if bad else 150, "lower_bound": 0.975,
                       "recovery_s": {"p50": round(rng.uniform(0.5, 1.0), 6), "p95": round(rng.uniform(1.5, 2.5), 6),
                                      "max": round(rng.uniform(2.5, 3.0), 6)}} for a in ACTIONS}
        gpus.append({"bdf": f"0000:{0x18 + g * 0x11:02x}:00.0", "uuid": f"GPU-{i:08x}-{g}", "class": "fail" if bad else "pass",
                     "evidence": [f"{a}: 150/150 recovered, lower bound 0.975" for a in ACTIONS],
                     "reliability": {"class": cls if bad else "churn-safe", "reasons": ["flr: reliable by the sequential test"]},
                     "sequences": {a: {"cycles": 150, "attempts": 150, "failures": 0, "outcome": "reliable",
                                       "stopped": "decided", "sprt": {"p0": 0.0005, "p1": 0.02, "alpha": 0.05, "beta": 0.05,
                                                                      "cap": 300, "cycles": 150, "failures": 0,
                                                                      "llr": -2.95, "decision": "reliable"}}
                                   for a in ACTIONS},
                     "aer_events": 0, "actions": actions})
    decision = {"churn-safe": "admit", "long-jobs-only": "admit", "inconclusive": "retest",
                "reboot-required": "reboot_required"}.get(cls, "quarantine")
    return {"schema_version": "1.1", "generator": "bench",
            "run": {"run_id": f"run-{i}", "started_at": "2026-11-22T00:00:00Z", "backend": "real", "options": {},
                    "cycles_recorded": 7200, "outcomes": {}, "journal_problems": [], "profile": None},
            "node": {"hostname": f"gpu{i:05d}", "name": f"gpu{i:05d}", "decision": decision, "decided_by": "acceptance",
                     "reliability": cls, "evidence": [], "labels": {}},
            "gpus": gpus}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        size = 0
        t = time.perf_counter()
        for i in range(args.nodes):
            d = root / f"gpu{i:05d}"
            d.mkdir(parents=True)
            text = json.dumps(result(i, rng), indent=2)
            (d / "result.json").write_text(text)
            size += len(text)
        (root / "gpu00007" / "result.json").write_text('{"node": {"decis')  # one corrupt file among them
        gen = time.perf_counter() - t
        best, rss = None, 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "gpusoak.cli", "fleet", str(root), "--out", str(Path(tmp) / "out")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            out = proc.stdout.read().decode()
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"gpusoak fleet failed: {proc.stderr.read().decode()[-2000:]}")
            best = wall if best is None else min(best, wall)
            rss = max(rss, usage.ru_maxrss)
        print(f"{args.nodes} result files, {size / 1e6:.0f} MB, generated in {gen:.0f} s")
        print(out.strip())
        print(f"gpusoak fleet: {best:.2f} s wall (best of {args.repeat}; target < 10 s), "
              f"peak RSS {rss / 1024:.0f} MiB (target < 1024 MiB)")


if __name__ == "__main__":
    main()
