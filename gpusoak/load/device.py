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
