"""Benchmark (issue 14): how often the verdict is wrong, over simulated GPUs whose truth is known.

Run:  python bench/bench_accuracy.py [--gpus 1000] [--seed 1] [--jobs 2] [--out FILE.json]
      python bench/bench_accuracy.py --smoke   # about 20 GPUs, seeded: what CI runs

Draws GPUs from the mix below (most healthy; each fault mode of the simulator at a rate drawn
log-uniformly from 0.5 % to 30 %), puts them eight to a simulated node, and runs the acceptance
profile on each node exactly as a user does (`gpusoak run --profile acceptance`, with loads and the
post-check of a real node), on FLR, the one action every fault mode acts on. Then it compares each
GPU's reliability class with its truth:

- **unsafe admit**: a GPU failing at a rate at or above the sequential test's p1 (2 %), classed
  `churn-safe` (whether or not its fault showed in the run: how often it does not is the test's
  power). Target: at most the test's beta (5 %), with its 95 % interval.
- **sticky admitted**: a GPU whose sticky fault (one that leaves it needing a reboot) showed in
  the run, admitted even for long jobs (`churn-safe` or `long-jobs-only`). Target: none.
- **false quarantine**: a healthy GPU classed `quarantine`, `hardware-investigation` or
  `reboot-required`. Target: at most the test's alpha (5 %), with its 95 % interval.

GPUs whose rate lies between p0 and p1 (0.05 % to 2 %), sticky or not, are the test's zone of
indifference: they are reported apart and counted in no number. Prints the confusion matrix of true class
against given class, the two numbers with Wilson 95 % intervals, and the run time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gpusoak.verdict.score import (
    CHURN_SAFE,
    HARDWARE,
    LONG_JOBS_ONLY,
    QUARANTINE_CLASS,
    REBOOT_CLASS,
    wilson_lower_bound,
)
from gpusoak.verdict.sprt import SprtParams

P0, P1 = SprtParams().p0, SprtParams().p1
ALPHA, BETA = SprtParams().alpha, SprtParams().beta
RATES = (0.005, 0.30)  # fault rates are drawn log-uniformly over this range
PER_NODE = 8
BDFS = ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
        "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0")  # a DGX H100's, as h100-8gpu

# The mix: (profile, share, sticky, extra parameters). Sticky: once it happens the GPU needs a
# reboot (gpusoak/sim/profiles.py STICKY); the others fail a share p of resets and can come back.
MIX = (
    ("healthy", 0.70, False, {}),
    ("flaky-flr", 0.08, False, {}),  # "not ready ...ms after FLR; giving up" (drivers/pci/pci.c pci_dev_wait)
    ("degraded-link", 0.04, False, {"width": 8}),  # the link retrains at x8 after a reset
    ("silent-corruption", 0.05, False, {}),  # a reset "succeeds", memory returns wrong data
    ("late-gsp-timeout", 0.04, False, {"delay": 6.0}),  # Xid 119 seconds after the bind
    ("d3cold-stuck", 0.04, True, {}),  # stuck in D3cold
    ("falls-off-bus-under-load", 0.05, True, {}),  # Xid 79 when reset after a load
)
BAD_CLASSES = (QUARANTINE_CLASS, HARDWARE, REBOOT_CLASS)


@dataclass(frozen=True)
class Drawn:
    profile: str
    p: float | None  # the fault's rate (None: healthy)
    sticky: bool
    params: dict

    @property
    def truth(self) -> str:
        """healthy, indifferent (p0 < p < p1: no test need tell it apart), rate (p >= p1, it can
        come back), or sticky (p >= p1, it needs a reboot once it happens)."""
        if self.p is None:
            return "healthy"
        if self.p < P1:
            return "indifferent"
        return "sticky" if self.sticky else "rate"


def draw(rng: random.Random, n: int) -> list[Drawn]:
    shares = [m[1] for m in MIX]
    out = []
    for _ in range(n):
        name, _, sticky, params = rng.choices(MIX, weights=shares)[0]
        p = None if name == "healthy" else math.exp(rng.uniform(math.log(RATES[0]), math.log(RATES[1])))
        out.append(Drawn(name, None if p is None else round(p, 4), sticky, params))
    return out


def scenario(index: int, seed: int, gpus: list[Drawn]) -> str:
    lines = [f'name = "accuracy-{index}"', f'hostname = "accuracy-{index}"', 'kernel = "6.8.0-48-generic"',
             f"seed = {seed}", "[services]", 'nvidia-persistenced = "inactive"']
    for bdf, g in zip(BDFS, gpus, strict=False):
        lines += ["[[gpu]]", f'bdf = "{bdf}"', f'profile = "{g.profile}"']
        if g.p is not None:
            lines.append(f"p = {g.p}")
        lines += [f"{k} = {json.dumps(v)}" for k, v in g.params.items()]
    return "\n".join(lines) + "\n"


def run_node(index: int, seed: int, gpus: list[Drawn], work: Path) -> list[tuple[Drawn, str]]:
    """The acceptance profile on one simulated node, through `gpusoak run`; each GPU's class."""
    path = work / f"node-{index}.toml"
    path.write_text(scenario(index, seed, gpus))
    out = work / f"node-{index}"
    done = subprocess.run([sys.executable, "-m", "gpusoak.cli", "run", "--backend", f"sim:{path}", "--profile",
                           "acceptance", "--actions", "flr", "--report-dir", str(out), "-q"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (out / "result.json").is_file():
        raise RuntimeError(f"node {index}: gpusoak run exited {done.returncode}: {done.stderr[-1500:]}")
    doc = json.loads((out / "result.json").read_text())
    classes = {g["bdf"]: g["reliability"]["class"] for g in doc["gpus"]}
    failed = {g["bdf"]: sum(a["attempts"] - a["successes"] for a in g["actions"].values()) for g in doc["gpus"]}
    return [(g, classes[bdf], failed[bdf]) for bdf, g in zip(BDFS, gpus, strict=False)]


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson 95 % interval of k in n (0, 1 with no trials)."""
    if n == 0:
        return 0.0, 1.0
    low = wilson_lower_bound(k, n)
    high = 1.0 - wilson_lower_bound(n - k, n)
    return low, high


def summarise(results: list[tuple[Drawn, str, int]]) -> dict:
    """``results``: each GPU's truth, given class, and failed cycles in its run."""
    matrix: dict[str, Counter] = {}
    for g, given, _ in results:
        key = g.truth if g.truth != "rate" else ("rate, first rung cures" if g.profile == "flaky-flr" else "rate")
        matrix.setdefault(key, Counter())[given] += 1
    bad = [(g, c, n) for g, c, n in results if g.truth in ("rate", "sticky")]
    healthy = [(g, c) for g, c, _ in results if g.truth == "healthy"]
    # Unsafe: classed churn-safe though failing at p1 or more (a fault the run never saw counts: the
    # test's power is what is measured), or a sticky fault the run saw admitted even for long jobs.
    unsafe = sum(c == CHURN_SAFE for _, c, _ in bad)
    unseen = sum(c == CHURN_SAFE and n == 0 for _, c, n in bad)
    sticky_seen = [(c, n) for g, c, n in bad if g.truth == "sticky" and n > 0]
    sticky_admitted = sum(c in (CHURN_SAFE, LONG_JOBS_ONLY) for c, _ in sticky_seen)
    false_q = sum(c in BAD_CLASSES for _, c in healthy)
    return {
        "gpus": len(results),
        "matrix": {k: dict(v) for k, v in sorted(matrix.items())},
        "unsafe_admits_rate": {"count": unsafe, "of": len(bad), "interval": wilson(unsafe, len(bad)),
                               "target": BETA, "never_failed_in_the_run": unseen},
        "unsafe_admits_sticky": {"count": sticky_admitted, "of": len(sticky_seen), "target": 0},
        "false_quarantines": {"count": false_q, "of": len(healthy), "interval": wilson(false_q, len(healthy)),
                              "target": ALPHA},
        "indifferent": dict(Counter(c for g, c, _ in results if g.truth == "indifferent")),
        "per_gpu": [{"profile": g.profile, "p": g.p, "truth": g.truth, "class": c, "failed_cycles": n}
                    for g, c, n in results],
    }


def gross_errors(summary: dict) -> list[str]:
    """What the CI smoke asserts: no sticky fault admitted, and neither rate far above its target
    (the upper end of its interval can exceed the target on 20 GPUs; the lower end must not)."""
    out = []
    if summary["unsafe_admits_sticky"]["count"]:
        out.append(f"sticky faults seen and admitted: {summary['unsafe_admits_sticky']}")
    for key in ("unsafe_admits_rate", "false_quarantines"):
        s = summary[key]
        if s["of"] and s["interval"][0] > s["target"]:
            out.append(f"{key}: {s['count']} of {s['of']}, interval {s['interval']} above {s['target']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="nodes run at once (each in its own process)")
    ap.add_argument("--smoke", action="store_true", help="about 20 GPUs (CI)")
    ap.add_argument("--out", type=Path, default=None, help="also write the summary as JSON")
    args = ap.parse_args(argv)
    n = 20 if args.smoke else args.gpus
    rng = random.Random(args.seed)
    gpus = draw(rng, n)
    nodes = [gpus[i:i + PER_NODE] for i in range(0, n, PER_NODE)]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpusoak-accuracy-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        done = pool.map(lambda i: run_node(i, args.seed * 1000 + i, nodes[i], Path(tmp)), range(len(nodes)))
        results = [r for node in done for r in node]
    summary = summarise(results)
    summary["seconds"] = round(time.monotonic() - start, 1)
    summary["mix"] = [{"profile": m[0], "share": m[1], "sticky": m[2]} for m in MIX]
    print(f"{n} GPUs on {len(nodes)} simulated nodes, acceptance profile on flr, {summary['seconds']} s")
    classes = sorted({c for row in summary["matrix"].values() for c in row})
    print("true \\ given".ljust(26) + "".join(c.rjust(24) for c in classes))
    for truth, row in summary["matrix"].items():
        print(truth.ljust(26) + "".join(str(row.get(c, 0)).rjust(24) for c in classes))
    for key in ("unsafe_admits_rate", "unsafe_admits_sticky", "false_quarantines"):
        s = summary[key]
        interval = f", 95 % interval {s['interval'][0]:.3f}-{s['interval'][1]:.3f}" if "interval" in s else ""
        seen = f"; {s['never_failed_in_the_run']} never failed in the run" if "never_failed_in_the_run" in s else ""
        print(f"{key}: {s['count']} of {s['of']}{interval} (target <= {s['target']}){seen}")
    print(f"indifferent (p0 < p < p1, not counted): {summary['indifferent']}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    errors = gross_errors(summary)
    for e in errors:
        print(f"GROSS ERROR: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
