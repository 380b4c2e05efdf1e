"""NVML through nvidia-ml-py, every call through one choke point.

``NotSupported`` and a missing function (an older driver) are a value, ``NA`` with its reason.
``GpuIsLost`` and ``ResetRequired`` are what a soak exists to catch: they become a status, never a
skipped check. A missing library or driver is ``NvmlUnavailable``, and NVML checks are skipped with
that reason. Handles are looked up again for every read: after a reset an old handle proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpusoak.errors import AccessDenied, NvmlFailure, NvmlUnavailable
from gpusoak.model import PciAddress


@dataclass(frozen=True)
class NA:
    """Not available: the device or driver does not support it. Never counts as healthy."""

    reason: str

    def __bool__(self) -> bool:
        return False


# NVML status of one GPU after a lookup.
OK, GPU_LOST, RESET_REQUIRED, NOT_FOUND = "ok", "gpu_lost", "reset_required", "not_found"


@dataclass(frozen=True)
class NvmlHealth:
    bdf: str
    status: str  # ok, gpu_lost, reset_required, not_found
    uuid: str | None = None
    values: dict[str, Any] = field(default_factory=dict)  # name -> value, or None when NA
    na: dict[str, str] = field(default_factory=dict)  # name -> why it is not available


def _lib():
    import pynvml  # nvidia-ml-py; loading libnvidia-ml.so.1 happens at nvmlInit, not here

    return pynvml


class Nvml:
    """An initialised NVML over ``lib`` (pynvml, or the simulator's pynvml-compatible object)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    @classmethod
    def open(cls, lib: Any | None = None) -> Nvml:
        lib = lib if lib is not None else _lib()
        try:
            lib.nvmlInit()
        except lib.NVMLError as err:
            raise NvmlUnavailable(f"NVML not available: {err}") from err
        except OSError as err:  # a broken library file
            raise NvmlUnavailable(f"NVML not available: {err}") from err
        return cls(lib)

    def close(self) -> None:
        try:
            self.lib.nvmlShutdown()
        except self.lib.NVMLError:
            pass  # reference-counted; extra shutdowns are tolerated by NVML

    # -- the choke point ---------------------------------------------------------------------
    def call(self, name: str, *args: Any) -> Any:
        """Call ``lib.<name>``; NotSupported and FunctionNotFound come back as NA."""
        lib = self.lib
        fn = getattr(lib, name, None)
        if fn is None:
            return NA(f"{name} not in this nvidia-ml-py")
        try:
            return fn(*args)
        except (lib.NVMLError_NotSupported, lib.NVMLError_FunctionNotFound) as err:
            return NA(f"{name}: {err}")
        except lib.NVMLError_NoPermission as err:
            raise AccessDenied(f"NVML {name}: {err}") from err
        except (lib.NVMLError_GpuIsLost, lib.NVMLError_ResetRequired):
            raise
        except lib.NVMLError as err:
            raise NvmlFailure(f"NVML {name}: {err}", code=getattr(err, "value", None)) from err

    def handle(self, bdf: PciAddress) -> Any:
        return self.call("nvmlDeviceGetHandleByPciBusId", bdf.nvml_bus_id)

    # -- reads -------------------------------------------------------------------------------
    def health(self, bdf: PciAddress) -> NvmlHealth:
        """A fresh health read of one GPU. Lost / reset-required / not found are statuses."""
        lib = self.lib
        try:
            h = self.handle(bdf)
            if isinstance(h, NA):
                raise NvmlFailure(h.reason)
            uuid = self.call("nvmlDeviceGetUUID", h)
            values, na = self._values(h)
        except lib.NVMLError_GpuIsLost:
            return NvmlHealth(str(bdf), GPU_LOST)
        except lib.NVMLError_ResetRequired:
            return NvmlHealth(str(bdf), RESET_REQUIRED)
        except NvmlFailure as err:
            if err.code == getattr(lib, "NVML_ERROR_NOT_FOUND", 6):
                return NvmlHealth(str(bdf), NOT_FOUND)
            raise
        return NvmlHealth(str(bdf), OK, None if isinstance(uuid, NA) else uuid, values, na)

    def _values(self, h: Any) -> tuple[dict[str, Any], dict[str, str]]:
        lib = self.lib
        values: dict[str, Any] = {}
        na: dict[str, str] = {}

        def put(key: str, value: Any, convert=lambda v: v) -> None:
            if isinstance(value, NA):
                values[key] = None
                na[key] = value.reason
            else:
                values[key] = convert(value)

        put("name", self.call("nvmlDeviceGetName", h), str)
        mem = self.call("nvmlDeviceGetMemoryInfo", h)
        put("memory_total_bytes", mem, lambda m: int(m.total))
        put("memory_used_bytes", mem, lambda m: int(m.used))
        put("temperature_c", self.call("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU), int)
        put("power_mw", self.call("nvmlDeviceGetPowerUsage", h), int)
        put("persistence_mode", self.call("nvmlDeviceGetPersistenceMode", h),
            lambda v: v == lib.NVML_FEATURE_ENABLED)
        put("pcie_gen_current", self.call("nvmlDeviceGetCurrPcieLinkGeneration", h), int)
        put("pcie_width_current", self.call("nvmlDeviceGetCurrPcieLinkWidth", h), int)
        put("pcie_gen_max", self.call("nvmlDeviceGetMaxPcieLinkGeneration", h), int)
        put("pcie_width_max", self.call("nvmlDeviceGetMaxPcieLinkWidth", h), int)
        put("ecc_uncorrected_volatile", self.call(
            "nvmlDeviceGetTotalEccErrors", h, lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, lib.NVML_VOLATILE_ECC), int)
        rows = self.call("nvmlDeviceGetRemappedRows", h)
        put("remapped_rows_correctable", rows, lambda r: int(r[0]))
        put("remapped_rows_uncorrectable", rows, lambda r: int(r[1]))
        put("remapped_rows_pending", rows, lambda r: bool(r[2]))
        put("remapped_rows_failure", rows, lambda r: bool(r[3]))
        return values, na
