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
from typing import Any

from gpusoak.errors import GpusoakError
from gpusoak.load import checks, peaks, protocol, telemetry
from gpusoak.model import PciAddress

OK, WRONG, USAGE, NO_CUPY, GPU = (protocol.OK, protocol.WRONG, protocol.BAD_OPTION, protocol.UNAVAILABLE,
                                  protocol.GPU_FAILED)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpusoak.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--bdf", required=True, help="the GPU's PCI address (DDDD:BB:DD.F)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="the load's window: batches of every kind back to back until it ends (default 20)")
    p.add_argument("--fraction", type=float, default=0.9, help="share of free memory to fill (default 0.9)")
    p.add_argument("--array", choices=("cupy", "numpy"), default="cupy",
                   help="cupy on the GPU (default); numpy on the CPU, for tests and the simulated node")
    p.add_argument("--gemm-size", type=int, default=None,
                   help="matrix size (default: chosen from the device's memory and SM count, 8192 on a "
                        "data-centre GPU; numpy: 256)")
    p.add_argument("--vram-bytes", type=int, default=None,
                   help="bytes to fill instead of a fraction of free memory (numpy needs it)")
    p.add_argument("--chunk-bytes", type=int, default=1 << 30, help="allocation chunk (default 1 GiB)")
    p.add_argument("--inject-corruption", type=int, default=0, metavar="WORDS",
                   help="flip WORDS words after writing, to prove detection (simulated node and tests)")
    p.add_argument("--sysfs-root", default="/sys", help="where to read the GPU's PCIe link under load (default /sys)")
    p.add_argument("--tf32", action="store_true",
                   help="let float32 products use TF32 tensor cores (the check's bound widens to match)")
    p.add_argument("--telemetry", choices=("auto", "nvml", "none"), default="auto",
                   help="sample power, SM clock, temperature and utilisation through NVML while loading "
                        "(auto: on the GPU path; the CPU path has no GPU to sample)")
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
    if not 0.0 < args.fraction <= protocol.MAX_FRACTION or args.seconds < 0 or (args.gemm_size or 16) < 16:
        return _verdict({"error": f"--fraction must be in (0, {protocol.MAX_FRACTION}], --seconds >= 0, "
                         "--gemm-size >= 16"}, USAGE)
    doc: dict[str, Any] = {"bdf": str(bdf), "array": args.array, "pid": os.getpid(), "started": time.time()}
    try:
        be, size, total, kernels = _setup(args, bdf, doc)
    except Exception as err:  # noqa: BLE001 - every way of not getting a device is reported, not raised
        return _verdict({**doc, "error": f"{type(err).__name__}: {err}"}, _setup_verdict(err))
    corrupt = _corruptor(args.inject_corruption)
    try:
        plan = checks.Plan(n=size, vram_bytes=total, chunk_bytes=min(args.chunk_bytes, max(total, 4)), tf32=args.tf32)
        doc["plan"] = {"n": plan.n, "vram_bytes": plan.vram_bytes, "chunk_bytes": plan.chunk_bytes,
                       "tf32": plan.tf32, "exact_k": {k.dtype: plan.k(k) for k in plan.kinds if k.exact}}
        with _sampler(args, bdf) as sampler:
            result = checks.window(be, plan, args.seconds, corrupt=corrupt, kernels=kernels)
            doc["link"] = _link(args.sysfs_root, bdf)
        doc.update(checks.figures(result))
        doc["telemetry"] = sampler.summary()
        tflops = {g.dtype + ("-tf32" if g.dtype == "float32" and plan.tf32 else ""): g.tflops
                  for g in result.gemm if not g.exact}
        doc["peak_share"] = peaks.shares(doc.get("name"), tflops, result.vram.fill_gbps if result.vram else None)
    except Exception as err:  # noqa: BLE001
        from gpusoak.load.device import lost
        gone = lost(err)
        doc["error"] = f"{'GPU lost mid-load' if gone else 'load failed'}: {type(err).__name__}: {err}"
        # Only an error that says the GPU is gone is the GPU's; any other (a cupy or driver stack
        # problem, a bug in this code) is gpusoak's own failure: it has not looked.
        return _verdict(doc, GPU if gone else NO_CUPY)
    wrong = result.wrong
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
    """(backend, GEMM size, VRAM bytes, fused kernels or None) for the path asked."""
    if args.array == "numpy":
        doc["device"] = "cpu (numpy)"
        return checks.HostBackend(), args.gemm_size or 256, args.vram_bytes or 64 << 20, None
    from gpusoak.load import device

    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read by cupy when it decides a float32 GEMM's compute type
    cp = device.cupy()
    index = device.select(cp, bdf)
    doc["device"] = f"cuda:{index}"
    doc.update(device.device_facts(cp, index))
    free = device.free_bytes(cp)
    size = args.gemm_size or checks.square_size(free, doc.get("sm_count"))
    # The operands (about 22 n**2 bytes for every kind) come out of the share asked for.
    total = args.vram_bytes or max(0, int(free * args.fraction) - 22 * size * size)
    doc["free_bytes"] = free
    return device.CudaBackend(cp), size, total, device.kernels(cp)


def _sampler(args, bdf: PciAddress) -> telemetry.Sampler:
    if args.telemetry == "none" or (args.telemetry == "auto" and args.array == "numpy"):
        why = "not asked (--telemetry none)" if args.telemetry == "none" else "the CPU load has no GPU to sample"
        return telemetry.Sampler(None, bdf, why=why)
    lib, why = telemetry.nvml_library()
    return telemetry.Sampler(lib, bdf, why=why)


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
