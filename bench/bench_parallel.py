"""Benchmark (issue 7): an 8-GPU node soaked in parallel against the same run serial.

Run:  python bench/bench_parallel.py [--scenario h100-8gpu] [--actions flr,rebind]

The acceptance plan (sequential test, cap 300) on the simulated node, once with a worker per GPU
and once one GPU after another. Prints the node's time for each (the simulated clock: what the
run would take on the node) and the ratio (target >= 5x), the real seconds this machine spent,
and whether both runs gave the same outcome for every GPU and action.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gpusoak.schedule import Plan, Scheduler
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
from gpusoak.verdict.sprt import SprtParams


def run(scenario: str, actions: tuple[str, ...], parallel: bool, tmp: Path) -> tuple[float, float, dict]:
    sim = open_sim_node(scenario)
    try:
        soak = Soak(sim.node, "bench", SoakOptions(actions=actions, destructive=True, load_seconds=0.0),
                    sim.node.gpus())
        soak.start(tmp / f"{parallel}.jsonl")
        start = time.perf_counter()
        sched = Scheduler(soak, Plan(actions=actions, sequential=SprtParams(), parallel=parallel))
        sched.run()
        real = time.perf_counter() - start
        soak.journal.close()
        return sched.node_seconds, real, {k: (s.outcome, s.cycles) for k, s in sched.sequences.items()}
    finally:
        sim.node.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="h100-8gpu")
    ap.add_argument("--actions", default="flr,rebind")
    args = ap.parse_args()
    actions = tuple(args.actions.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        par_node, par_real, par = run(args.scenario, actions, True, Path(tmp))
        ser_node, ser_real, ser = run(args.scenario, actions, False, Path(tmp))
    print(f"{args.scenario}, actions {','.join(actions)}, acceptance plan (sequential, cap 300)")
    print(f"node time: parallel {par_node:.0f} s, serial {ser_node:.0f} s, ratio {ser_node / par_node:.2f}x (target >= 5x)")
    print(f"real time on this machine: parallel {par_real:.1f} s, serial {ser_real:.1f} s")
    print(f"same outcome and cycles for every GPU and action: {par == ser}")


if __name__ == "__main__":
    main()
