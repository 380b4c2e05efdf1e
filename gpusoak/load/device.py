"""The GPU-only part of the load: cupy, the CUDA device chosen by PCI bus id, memory, sync.

Small on purpose: everything it does is checked on a GPU node only (tests skip it with a reason).
The device is chosen by its PCI address, never by enumeration order: CUDA's order need not be
NVML's or the kernel's (CUDA_DEVICE_ORDER defaults to FASTEST_FIRST).
"""

from __future__ import annotations

from typing import Any

from gpusoak.model import PciAddress


class CupyMissing(RuntimeError):
    pass


def cupy() -> Any:
    try:
        import cupy as cp
    except ImportError as err:
        raise CupyMissing("cupy is not installed: install gpusoak with the extra that matches the "
                          "node's CUDA: pip install 'gpusoak[cuda12]' or 'gpusoak[cuda13]'") from err
    return cp


def select(cp: Any, bdf: PciAddress) -> int:
    """Make the CUDA device at ``bdf`` current; returns its CUDA index."""
    index = cp.cuda.runtime.deviceGetByPCIBusId(bdf.nvml_bus_id)
    cp.cuda.Device(index).use()
    return index


def free_bytes(cp: Any) -> int:
    free, _total = cp.cuda.runtime.memGetInfo()
    return int(free)


def sync(cp: Any) -> None:
    cp.cuda.Stream.null.synchronize()


def oom_errors(cp: Any) -> tuple[type[BaseException], ...]:
    return (cp.cuda.memory.OutOfMemoryError, MemoryError)


def lost(err: BaseException) -> bool:
    """Does a CUDA error say the GPU is gone (fallen off the bus, or needing a reset)?"""
    text = str(err)
    return any(s in text for s in ("cudaErrorDevicesUnavailable", "cudaErrorNoDevice", "cudaErrorLaunchFailure",
                                   "cudaErrorIllegalAddress", "cudaErrorECCUncorrectable", "GPU is lost",
                                   "cudaErrorHardwareStackError", "cudaErrorUnknown"))


# The three VRAM patterns of checks.expected as single-pass kernels: the fill writes each word once
# and reads nothing, the count reads each word once (what the fill and read GB/s are meant to show).
_PATTERN_C = """
    unsigned int g = (unsigned int)(base + i);
    unsigned int p;
    if (kind == 0) { p = g; }
    else if (kind == 1) { p = 1u << (g % 32u); }
    else { unsigned int h = g ^ seed; h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u;
           h ^= h >> 16; p = h; }
"""
_KINDS = {"address": 0, "walking_ones": 1, "random": 2}


def pattern_kernels(cp: Any):
    """(fill, count) callables for checks.vram. ``i`` is ElementwiseKernel's documented element index;
    the count writes a one-byte flag per word and sums them (a quarter of the chunk as scratch)."""
    fill_k = cp.ElementwiseKernel("uint64 base, uint32 kind, uint32 seed", "uint32 buf",
                                  _PATTERN_C + "buf = p;", "gpusoak_fill")
    flag_k = cp.ElementwiseKernel("uint32 buf, uint64 base, uint32 kind, uint32 seed", "uint8 bad",
                                  _PATTERN_C + "bad = (buf != p) ? 1 : 0;", "gpusoak_flag")

    def fill(buf, name, base, seed):
        fill_k(cp.uint64(base), cp.uint32(_KINDS[name]), cp.uint32(seed), buf)

    def count(buf, name, base, seed):
        return int(flag_k(buf, cp.uint64(base), cp.uint32(_KINDS[name]), cp.uint32(seed)).sum(dtype=cp.uint64))

    return fill, count
