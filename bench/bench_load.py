"""Benchmark (GPU node only): the load's achieved share of the GPU's peak.

Run on a GPU node:   python bench/bench_load.py --bdf 0000:18:00.0 [--seconds 30]
Elsewhere it prints why it was skipped and exits 0. It loads only (no reset, no MIG or clock change).

Targets (issue 5): fp16 GEMM >= 70 % of the dense fp16/bf16 tensor-core peak; VRAM fill >= 80 % of
the memory bandwidth. Peaks are NVIDIA's datasheet figures for the SXM/PCIe parts named below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# (dense fp16 tensor TFLOP/s, memory TB/s), from NVIDIA's H100, H200 and A100 datasheets.
PEAKS = {
    "NVIDIA H100 80GB HBM3": (989.4, 3.35),  # H100 SXM5
    "NVIDIA H100 PCIe": (756.0, 2.0),
    "NVIDIA H100 NVL": (835.0, 3.9),
    "NVIDIA H200": (989.4, 4.8),  # H200 SXM
    "NVIDIA A100-SXM4-80GB": (312.0, 2.039),
    "NVIDIA A100 80GB PCIe": (312.0, 1.935),
}


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
    fp16 = next(g for g in doc["gemm"] if g["dtype"] == "float16")
    fp32 = next(g for g in doc["gemm"] if g["dtype"] == "float32")
    vram = doc["vram"]
    print(f"GPU: {name} at {args.bdf} ({doc['device']})")
    print(f"fp32 GEMM: {fp32['tflops']:.1f} TFLOP/s; fp16 GEMM: {fp16['tflops']:.1f} TFLOP/s (n={fp16['n']})")
    print(f"VRAM: {vram['bytes_total'] / 2**30:.1f} GiB checked, fill {vram['write_gbps']:.0f} GB/s, "
          f"read-check {vram['read_gbps']:.0f} GB/s, mismatched words {vram['mismatched_words']}")
    if name in PEAKS:
        tflops, tbps = PEAKS[name]
        print(f"fp16 share of dense peak {tflops} TFLOP/s: {fp16['tflops'] / tflops:.0%} (target >= 70%)")
        print(f"fill share of {tbps} TB/s: {vram['write_gbps'] / (tbps * 1000):.0%} (target >= 80%)")
    else:
        print(f"no datasheet peak recorded for {name!r}: add it to PEAKS to get the shares")
    return 0


if __name__ == "__main__":
    sys.exit(main())
