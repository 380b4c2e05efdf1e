"""Benchmark (issue 7): cycles to a verdict, sequential test against a fixed 300-cycle soak.

Run:  python bench/bench_sequential.py [--seeds 100]

Each seed is one simulated node with one healthy GPU and one GPU whose FLR fails 2 % of the time
(the flaky-flr profile, p = 0.02). Both are soaked with FLR until the sequential test decides
(default parameters, cap 300), and, for a share of the seeds, for a fixed 300 cycles.

Prints, in one run:
- healthy GPUs: mean cycles to the verdict, and that over 300 (target <= 0.5);
- the 2 % GPU: the share caught (called unreliable, or not passed by the cap; target >= 95 %),
  with the exact figure from the test's operating characteristic beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gpusoak.schedule import Plan, Scheduler
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
from gpusoak.verdict.sprt import SprtParams, operating_characteristic

HEALTHY, FLAKY = "0000:18:00.0", "0000:3a:00.0"


def node(seed: int):
    data = {"name": f"bench-{seed}", "seed": seed, "services": {"nvidia-persistenced": "inactive"},
            "gpu": [{"bdf": HEALTHY}, {"bdf": FLAKY, "profile": "flaky-flr", "p": 0.02}]}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(_toml(data))
    return open_sim_node(f.name, seed=seed)


def _toml(data: dict) -> str:
    lines = [f'name = "{data["name"]}"', f'seed = {data["seed"]}', "[services]", 'nvidia-persistenced = "inactive"']
    for g in data["gpu"]:
        lines.append("[[gpu]]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in g.items()]
    return "\n".join(lines) + "\n"


def soak_once(seed: int, plan: Plan, tmp: Path) -> dict[str, tuple[int, str]]:
    sim = node(seed)
    try:
        soak = Soak(sim.node, f"bench-{seed}", SoakOptions(actions=("flr",), destructive=True, load_seconds=0.0),
                    sim.node.gpus())
        soak.start(tmp / f"{seed}-{plan.sequential is not None}.jsonl")
        sched = Scheduler(soak, plan)
        sched.run()
        soak.journal.close()
        return {bdf: (s.cycles, s.outcome) for (bdf, _), s in sched.sequences.items()}
    finally:
        sim.node.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--fixed-every", type=int, default=10, help="also run the fixed soak for every Nth seed")
    args = ap.parse_args()
    params = SprtParams()
    sequential = Plan(actions=("flr",), sequential=params)
    fixed = Plan(actions=("flr",), sequential=None, cycles=300)
    start = time.perf_counter()
    healthy, flaky_caught, fixed_cycles, fixed_caught, fixed_runs = [], 0, [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            got = soak_once(seed, sequential, Path(tmp))
            healthy.append(got[HEALTHY][0])
            flaky_caught += got[FLAKY][1] != "reliable"
            if seed % args.fixed_every == 1:
                fx = soak_once(seed, fixed, Path(tmp))
                fixed_cycles.append(fx[HEALTHY][0])
                fixed_caught += fx[FLAKY][1] == "failed"
                fixed_runs += 1
    mean = sum(healthy) / len(healthy)
    accept, _, _ = operating_characteristic(params, 0.02)
    print(f"{args.seeds} seeds in {time.perf_counter() - start:.0f} s; {params.describe()}")
    print(f"healthy GPU: mean {mean:.1f} cycles to a verdict (min {min(healthy)}, max {max(healthy)}); "
          f"fixed soak: {sum(fixed_cycles) / max(1, len(fixed_cycles)):.0f} cycles")
    print(f"ratio sequential / fixed 300: {mean / 300:.3f} (target <= 0.5)")
    print(f"GPU failing 2 % of FLRs: caught in {flaky_caught}/{args.seeds} = {flaky_caught / args.seeds:.1%} "
          f"(exact: {1 - accept:.1%}; target >= 95 %); fixed soak caught {fixed_caught}/{fixed_runs}")


if __name__ == "__main__":
    main()
