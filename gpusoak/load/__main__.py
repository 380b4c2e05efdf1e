"""``python -m gpusoak.load``: load one GPU (or the CPU) with checked compute and memory, print JSON.

The last line printed is the verdict document (gpusoak/load/protocol.py): ``verdict`` and
``exit``. Exit status: 0 every result checked out; 10 a wrong product or a corrupted word; 11 a bad
option; 12 unavailable: cupy is missing (the message names the extra to install), or the CUDA
stack could not give a device or failed for a reason that does not say the GPU is lost; 13 the GPU
failed or was lost. None is one Python gives on its own (1 for an uncaught exception, 2 for argparse's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from gpusoak.errors import GpusoakError
from gpusoak.load import checks, protocol
from gpusoak.model import PciAddress

OK, WRONG, USAGE, NO_CUPY, GPU = (protocol.OK, protocol.WRONG, protocol.BAD_OPTION, protocol.UNAVAILABLE,
                                  protocol.GPU_FAILED)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpusoak.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--bdf", required=True, help="the GPU's PCI address (DDDD:BB:DD.F)")
    p.add_argument("--seconds", type=float, default=20.0, help="GEMM time per dtype (default 20)")
    p.add_argument("--fraction", type=float, default=0.9, help="share of free memory to fill (default 0.9)")
    p.add_argument("--array", choices=("cupy", "numpy"), default="cupy",
                   help="cupy on the GPU (default); numpy on the CPU, for tests and the simulated node")
    p.add_argument("--gemm-size", type=int, default=8192, help="matrix size (default 8192; numpy: keep it small)")
    p.add_argument("--vram-bytes", type=int, default=None,
                   help="bytes to fill instead of a fraction of free memory (numpy needs it)")
    p.add_argument("--chunk-bytes", type=int, default=1 << 30, help="allocation chunk (default 1 GiB)")
    p.add_argument("--inject-corruption", type=int, default=0, metavar="WORDS",
                   help="flip WORDS words after writing, to prove detection (simulated node and tests)")
    p.add_argument("--sysfs-root", default="/sys", help="where to read the GPU's PCIe link under load (default /sys)")
    return p


def main(argv: list[str] | None = None) -> int:
    doc = run(argv)
    print(json.dumps(doc), flush=True)
    return doc["exit"]


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """The load and its verdict document, without printing it: what ``main`` prints, and what the
    simulated runner answers in process for profiles and benchmarks (gpusoak/sim/runner.py)."""
    args = _parser().parse_args(argv)
    try:
        bdf = PciAddress.parse(args.bdf)
    except GpusoakError as err:
        return _verdict({"error": str(err)}, USAGE)
    if not 0.0 < args.fraction <= protocol.MAX_FRACTION or args.seconds < 0 or args.gemm_size < 16:
        return _verdict({"error": f"--fraction must be in (0, {protocol.MAX_FRACTION}], --seconds >= 0, "
                         "--gemm-size >= 16"}, USAGE)
    doc: dict[str, Any] = {"bdf": str(bdf), "array": args.array, "pid": os.getpid(), "started": time.time()}
    try:
        xp, sync, total, oom, kernels = _setup(args, bdf, doc)
    except Exception as err:  # noqa: BLE001 - every way of not getting a device is reported, not raised
        return _verdict({**doc, "error": f"{type(err).__name__}: {err}"}, _setup_verdict(err))
    corrupt = _corruptor(args.inject_corruption)
    try:
        doc["gemm"] = [_gemm(xp, args, dtype, sync) for dtype in ("float32", "float16")]
        doc["link"] = _link(args.sysfs_root, bdf)
        fill, count = kernels
        doc["vram"] = asdict(checks.vram(xp, total, min(args.chunk_bytes, max(total, 4)), sync, oom=oom,
                                         corrupt=corrupt, fill=fill, count=count))
    except Exception as err:  # noqa: BLE001
        from gpusoak.load.device import lost
        gone = lost(err)
        doc["error"] = f"{'GPU lost mid-load' if gone else 'load failed'}: {type(err).__name__}: {err}"
        # Only an error that says the GPU is gone is the GPU's; any other (a cupy or driver stack
        # problem, a bug in this code) is gpusoak's own failure: it has not looked.
        return _verdict(doc, GPU if gone else NO_CUPY)
    wrong = sum(g["mismatches"] + g["exact_mismatches"] for g in doc["gemm"]) + doc["vram"]["mismatched_words"]
    doc["ok"] = wrong == 0
    return _verdict(doc, OK if wrong == 0 else WRONG)


def _setup_verdict(err: BaseException) -> str:
    """Why no device could be had: the GPU's failure only when CUDA says the GPU is lost. A CUDA
    runtime newer than the driver (cudaErrorInsufficientDriver), NVRTC missing, no device visible
    under CUDA_VISIBLE_DEVICES (cudaErrorNoDevice) or cupy missing is the install's: unavailable,
    which refuses the cycle instead of failing the GPU."""
    from gpusoak.load.device import lost

    return GPU if lost(err) and "cudaErrorNoDevice" not in str(err) else NO_CUPY


def _setup(args, bdf: PciAddress, doc: dict):
    if args.array == "numpy":
        import numpy as np

        doc["device"] = "cpu (numpy)"
        return np, lambda: None, args.vram_bytes or 64 << 20, (MemoryError,), (None, None)
    from gpusoak.load import device

    cp = device.cupy()
    doc["device"] = f"cuda:{device.select(cp, bdf)}"
    free = device.free_bytes(cp)
    total = args.vram_bytes or int(free * args.fraction)
    doc["free_bytes"] = free
    return cp, lambda: device.sync(cp), total, device.oom_errors(cp), device.pattern_kernels(cp)


def _gemm(xp, args, dtype: str, sync) -> dict:
    r = checks.gemm(xp, args.gemm_size, dtype, args.seconds / 2, sync)
    return {**asdict(r), "tflops": round(r.tflops, 3)}


def _link(root: str, bdf: PciAddress) -> dict:
    """The link as it runs under load: read right after the GEMMs, while this process still holds
    its CUDA context. An idle NVIDIA GPU lowers its PCIe generation ("may be lower than the max"
    when not in use, NVML nvmlDeviceGetCurrPcieLinkGeneration), so only a reading taken while the
    GPU works says what speed the link trained at [U: how fast the driver drops the generation once
    the GEMMs end]. A read that fails is reported, never the load's failure."""
    from gpusoak.host.sysfs import Sysfs

    try:
        link = Sysfs(root).function(bdf).link
    except GpusoakError as err:
        return {"error": str(err)}
    return {"current_speed": link.current_speed, "current_width": link.current_width}


def _corruptor(words: int):
    if words <= 0:
        return None

    def corrupt(buf, index: int) -> None:
        if index == 0:
            buf[:words] ^= 0x1  # one bit flipped in each of the first WORDS words

    return corrupt


def _verdict(doc: dict, verdict: str) -> dict[str, Any]:
    doc["verdict"], doc["exit"] = verdict, protocol.EXIT[verdict]
    return doc


if __name__ == "__main__":
    sys.exit(main())
