"""Benchmark (GPU node only): the load's achieved share of the GPU's peak.

Run on a GPU node:   python bench/bench_load.py --bdf 0000:18:00.0 [--seconds 30]
Elsewhere it prints why it was skipped and exits 0. It loads only (no reset, no MIG or clock change).

Targets (issue 15): the device busy >= 95 % of the window; fp16 GEMM >= 70 % of the dense fp16
tensor-core peak; VRAM fill >= 80 % of the memory bandwidth. Peaks are NVIDIA's datasheet figures
(gpusoak/load/peaks.py, with their sources). Prints the load's own document too (JSON, last line).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpusoak.load import peaks  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bdf", required=True)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--fraction", type=float, default=0.9)
    args = p.parse_args()
    try:
        import cupy as cp

        index = cp.cuda.runtime.deviceGetByPCIBusId(args.bdf)
        name = cp.cuda.runtime.getDeviceProperties(index)["name"].decode()
    except Exception as err:  # noqa: BLE001 - no cupy, no driver, no such GPU: all mean "not here"
        print(f"skipped: needs cupy and an NVIDIA GPU at {args.bdf} ({type(err).__name__}: {err})")
        return 0
    done = subprocess.run([sys.executable, "-m", "gpusoak.load", "--bdf", args.bdf, "--seconds", str(args.seconds),
                           "--fraction", str(args.fraction)], capture_output=True, text=True, check=False)
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    if done.returncode != 0:
        print(f"load failed (exit {done.returncode}): {doc.get('error') or doc}")
        return 1
    gemm = {g["kind"]: g for g in doc["gemm"]}
    vram, window, tele = doc["vram"], doc["window"], doc.get("telemetry", {})
    print(f"GPU: {name} at {args.bdf} ({doc['device']}, {doc.get('sm_count')} SMs, cc {doc.get('compute_capability')})")
    print(f"window {window['seconds']:.1f} s, setup {window['setup_s']:.1f} s, {window['batches']} batches, "
          f"busy {window['busy_share']:.1%} (target >= 95%); not run: {window['unavailable'] or 'none'}")
    for kind, g in gemm.items():
        print(f"  {kind:14} n={g['n']} k={g['k']}: {g['tflops']:.1f} TFLOP/s over {g['products']} products")
    print(f"VRAM: {vram['bytes_total'] / 2**30:.1f} GiB kept full, {vram['passes']:.1f} passes, "
          f"first fill {vram['fill_gbps']:.0f} GB/s, verify+rewrite {vram['gbps']:.0f} GB/s, "
          f"mismatched words {vram['mismatched_words']}")
    for reading in ("power_w", "sm_clock_mhz", "temperature_c", "utilisation_pct"):
        if isinstance(tele.get(reading), dict):
            r = tele[reading]
            print(f"  {reading}: mean {r['mean']}, min {r['min']}, max {r['max']} ({r['samples']} samples)")
    if "unavailable" in tele:
        print(f"  telemetry unavailable: {tele['unavailable']}")
    peak = peaks.peak_of(name)
    if peak is not None:
        fp16 = gemm.get("float16", {}).get("tflops", 0.0)
        print(f"fp16 share of dense peak {peak.fp16_tflops} TFLOP/s: {fp16 / peak.fp16_tflops:.0%} (target >= 70%)"
              + (f" [{peak.unconfirmed}]" if peak.unconfirmed else ""))
        print(f"fill share of {peak.memory_gbps:.0f} GB/s: {vram['fill_gbps'] / peak.memory_gbps:.0%} (target >= 80%)")
    else:
        print(f"no datasheet peak recorded for {name!r}: add it to gpusoak/load/peaks.py to get the shares")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
