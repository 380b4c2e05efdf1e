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
# and reads nothing; the count reads each word once and touches memory again only for a wrong word
# (atomicAdd on the count, atomicMin on the first index: CUDA C++ Programming Guide, "Atomic
# Functions", both defined for unsigned long long).
_PATTERN_C = """
    unsigned int g = (unsigned int)(base + i);
    unsigned int p;
    if (kind == 0) { p = g; }
    else if (kind == 1) { p = 1u << (g % 32u); }
    else { unsigned int h = g ^ seed; h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u;
           h ^= h >> 16; p = h; }
"""
_KINDS = {"address": 0, "walking_ones": 1, "random": 2}
_FLAG_C = "atomicAdd(&out[0], 1ULL); atomicMin(&out[1], (unsigned long long)i);"
_NONE = (1 << 64) - 1  # "no wrong element": the first index's identity for atomicMin


def kernels(cp: Any):
    """checks.Kernels for cupy: VRAM fill and count, and the product comparison, each one pass.
    ``i`` is ElementwiseKernel's documented element index; ``raw`` parameters are indexed freely.
    Counts come back as a 2-element uint64 device vector [wrong, first index] (no host read)."""
    from gpusoak.load.checks import ATOL, Kernels

    fill_k = cp.ElementwiseKernel("uint64 base, uint32 kind, uint32 seed", "uint32 buf",
                                  _PATTERN_C + "buf = p;", "gpusoak_fill")
    count_k = cp.ElementwiseKernel("uint32 buf, uint64 base, uint32 kind, uint32 seed, raw uint64 out", "",
                                   _PATTERN_C + "if (buf != p) { " + _FLAG_C + " }", "gpusoak_count")
    # T is float16, bfloat16 or float32; cupy's half type converts to float.
    exact_k = cp.ElementwiseKernel("T c, T c0, raw uint64 out", "",
                                   "if (!((float)c == (float)c0)) { " + _FLAG_C + " }", "gpusoak_equal")
    near_k = cp.ElementwiseKernel(
        "T c, T c0, float32 rtol, float32 atol, raw uint64 out", "",
        "float x = (float)c, y = (float)c0; "
        "if (!isfinite(x) || !(fabsf(x - y) <= atol + rtol * fabsf(y))) { " + _FLAG_C + " }", "gpusoak_near")

    def _out():
        return cp.array([0, _NONE], dtype=cp.uint64)

    def fill(buf, name, base, seed):
        fill_k(cp.uint64(base), cp.uint32(_KINDS[name]), cp.uint32(seed), buf)

    def count(buf, name, base, seed):
        out = _out()
        count_k(buf, cp.uint64(base), cp.uint32(_KINDS[name]), cp.uint32(seed), out)
        return out[0].astype(cp.int64), out[1].astype(cp.int64)

    def compare(c, c0, exact, rtol):
        out = _out()
        if exact:
            exact_k(c, c0, out)
        else:
            near_k(c, c0, cp.float32(rtol), cp.float32(ATOL), out)
        return out[0].astype(cp.int64), out[1].astype(cp.int64)

    return Kernels(fill=fill, count=count, compare=compare)


class CudaBackend:
    """checks.HostBackend's interface on one CUDA device: the load's work runs on a stream of
    its own (non-blocking, so it never serialises with the legacy default stream), events time
    each batch on the device (cupy.cuda.get_elapsed_time, milliseconds), and the counts cross to the
    host on a second non-blocking stream once the batch's end event has completed, so reading one
    batch never waits for the next one already queued."""

    def __init__(self, cp: Any) -> None:
        self.cp = self.xp = cp
        self.oom = oom_errors(cp)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.stream.use()
        self.copies = cp.cuda.Stream(non_blocking=True)
        self.name = f"cupy {getattr(cp, '__version__', '?')}: bfloat16 needs cupy 14 or later with ml_dtypes"

    def dtype(self, name: str) -> Any | None:
        if name == "bfloat16":
            return _bfloat16(self.cp)
        return self.cp.dtype(name)

    def mark(self) -> Any:
        event = self.cp.cuda.Event()
        event.record(self.stream)
        return event

    def elapsed_s(self, start: Any, end: Any) -> float:
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end) / 1000.0

    def wait(self, event: Any) -> None:
        event.synchronize()

    def sync(self) -> None:
        self.stream.synchronize()

    def fetch(self, arr: Any, after: Any = None) -> Any:
        if after is None:
            self.stream.synchronize()
        else:
            after.synchronize()
        return arr.get(stream=self.copies)


def _bfloat16(cp: Any) -> Any | None:
    """bfloat16 where this cupy can multiply it and compile a kernel over it (cupy 14's "initial
    support for bfloat16 via ml_dtypes.bfloat16", docs/source/upgrade.rst, which warns of compile
    issues with CUDA 12.1); None otherwise, and the load says bf16 did not run and why."""
    try:
        import ml_dtypes

        dt = cp.dtype(ml_dtypes.bfloat16)
        probe = cp.ones((16, 16), dtype=dt)
        cp.matmul(probe, probe)
        cp.ElementwiseKernel("T c, T c0", "bool d", "d = (float)c != (float)c0", "gpusoak_bf16_probe")(probe, probe)
        cp.cuda.get_current_stream().synchronize()
        return dt
    except Exception:  # noqa: BLE001 - no ml_dtypes, or a cupy without bfloat16 support
        return None


def device_facts(cp: Any, index: int) -> dict[str, Any]:
    """Name, SM count and compute capability (cudaGetDeviceProperties)."""
    props = cp.cuda.runtime.getDeviceProperties(index)
    name = props.get("name", b"")
    return {"name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
            "sm_count": int(props.get("multiProcessorCount", 0)),
            "compute_capability": f"{props.get('major', 0)}.{props.get('minor', 0)}"}
