"""Benchmark (CPU): what the load's checks cost at the production size, on numpy.

    python bench/bench_checks.py [--n 8192] [--old-n 512]

The load before batches checked its exact product against an int64 product computed on the host
(numpy has no BLAS for integers: 8192 x 2048 x 8192 MACs at about 0.06 GMAC/s is 38 minutes, against
a child deadline of 2 * seconds + 120 s, 160 s at the default 20 s). The checks now need no host
product: per batch, Freivalds' test (float64 matrix-vector products) on two products and one
comparison per product. This times each at size ``--n`` on the CPU, the operands' generation too,
and the old int64 reference at ``--old-n`` with its cost scaled to the production size (it grows
as n * k * n). The products themselves are made with float32 BLAS and cast (exact for the integer
inputs): numpy has no fp16 BLAS either, and the product is the GPU's work, not the check's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpusoak.load import checks  # noqa: E402

DEADLINE_S = 2 * 20 + 120  # gpusoak/load/child.py: the child's deadline at the default 20 s load


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(n: int, old_n: int) -> dict:
    be = checks.HostBackend()
    plan = checks.Plan(n=n, vram_bytes=0, chunk_bytes=1 << 20)
    out: dict = {"n": n, "deadline_s": DEADLINE_S, "kinds": {}}
    for kind in (checks.Kind("float16", True), checks.Kind("float16", False), checks.Kind("float32", False)):
        g, setup_s = _timed(lambda kind=kind: checks._Gemm(be, plan, kind, seed=3))
        product = (g.a.astype(np.float32) @ g.b.astype(np.float32)).astype(g.c0.dtype)
        g.c0[...] = product
        g.c[...] = product
        counts, freivalds_s = _timed(lambda g=g: be.fetch(np.stack(g._freivalds(g.c0, 11))))
        compared, compare_s = _timed(lambda g=g: be.fetch(np.stack(g.compare(g.c, g.c0, g.kind.exact,
                                                                             checks.RTOL[g.kind.dtype]))))
        assert int(counts[0]) == int(counts[2]) == 0 and int(compared[0]) == 0, (kind, counts, compared)
        out["kinds"][kind.name] = {"k": plan.k(kind), "setup_s": round(setup_s, 3),
                                   "freivalds_s": round(freivalds_s, 3), "compare_s": round(compare_s, 3),
                                   "batch_checks_s": round(2 * freivalds_s, 3)}
    k_old = min(old_n, 2048)
    rng = np.random.default_rng(1)
    ai = rng.integers(-1, 2, size=(old_n, k_old)).astype(np.int64)
    bi = rng.integers(-1, 2, size=(k_old, old_n)).astype(np.int64)
    _, old_s = _timed(lambda: ai @ bi)
    scale = (n * min(n, 2048) * n) / (old_n * k_old * old_n)
    out["old_int64_reference"] = {"measured_n": old_n, "measured_s": round(old_s, 3),
                                  "gmac_per_s": round(old_n * k_old * old_n / old_s / 1e9, 3),
                                  "at_n_s": round(old_s * scale, 1)}
    worst = max(v["setup_s"] + v["batch_checks_s"] + v["compare_s"] for v in out["kinds"].values())
    out["within_deadline"] = worst < DEADLINE_S
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--old-n", type=int, default=512)
    args = p.parse_args()
    doc = measure(args.n, args.old_n)
    print(json.dumps(doc, indent=2))
    return 0 if doc["within_deadline"] else 1


if __name__ == "__main__":
    sys.exit(main())
