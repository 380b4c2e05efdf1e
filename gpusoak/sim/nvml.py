"""A pynvml-compatible object over the simulated kernel.

It has pynvml's function names, constants and exception classes (the real ``NVMLError_*``
classes, imported from nvidia-ml-py), so gpusoak.host.nvml runs unchanged against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pynvml

from gpusoak.errors import GpusoakError
from gpusoak.model import PciAddress
from gpusoak.sim.kernel import GpuState, SimKernel

_GEN = {"2.5 GT/s PCIe": 1, "5.0 GT/s PCIe": 2, "8.0 GT/s PCIe": 3, "16.0 GT/s PCIe": 4,
        "32.0 GT/s PCIe": 5, "64.0 GT/s PCIe": 6}


@dataclass(frozen=True)
class SimHandle:
    bdf: PciAddress


class SimNvmlLib:
    """Only what gpusoak calls is here; anything else raises FunctionNotFound, as an old driver does."""

    def __init__(self, kernel: SimKernel) -> None:
        self._kernel = kernel
        self._inits = 0

    def __getattr__(self, name: str) -> Any:
        # Exception classes and constants are pynvml's own.
        if name.startswith(("NVMLError", "NVML_", "nvmlExceptionClass")):
            return getattr(pynvml, name)
        if name.startswith("nvml"):
            def missing(*_args: Any, **_kw: Any) -> Any:
                raise pynvml.NVMLError_FunctionNotFound()
            return missing
        raise AttributeError(name)

    # -- library ------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._inits += 1

    def nvmlShutdown(self) -> None:
        if self._inits == 0:
            raise pynvml.NVMLError_Uninitialized()
        self._inits -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._ready()
        return self._kernel.scenario.driver

    def _ready(self) -> None:
        if self._inits == 0:
            raise pynvml.NVMLError_Uninitialized()

    def _state(self, handle: SimHandle) -> GpuState:
        self._ready()
        st = self._kernel.gpus.get(handle.bdf)
        if st is None:
            raise pynvml.NVMLError_InvalidArgument()
        if not st.alive:
            raise pynvml.NVMLError_GpuIsLost()
        return st

    # -- devices -------------------------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._ready()
        return sum(1 for b in self._kernel.gpus if self._bound(b))

    def _bound(self, bdf: PciAddress) -> bool:
        link = self._kernel.tree.dev(bdf) / "driver"
        return link.is_symlink() and os.path.basename(os.readlink(link)) == "nvidia"

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> SimHandle:
        self._ready()
        try:
            bdf = _parse_bus_id(bus_id)
        except GpusoakError:
            raise pynvml.NVMLError_InvalidArgument() from None
        st = self._kernel.gpus.get(bdf)
        if st is None or not self._bound(bdf):
            raise pynvml.NVMLError_NotFound()
        handle = SimHandle(bdf)
        self._state(handle)
        return handle

    def nvmlDeviceGetUUID(self, h: SimHandle) -> str:
        return self._state(h).spec.uuid

    def nvmlDeviceGetName(self, h: SimHandle) -> str:
        return self._state(h).spec.model

    def nvmlDeviceGetMinorNumber(self, h: SimHandle) -> int:
        st = self._state(h)
        return [g.bdf for g in self._kernel.scenario.gpus].index(st.spec.bdf)

    def nvmlDeviceGetSerial(self, h: SimHandle) -> str:
        return self._state(h).spec.serial

    def nvmlDeviceGetPciInfo(self, h: SimHandle) -> Any:
        st = self._state(h)
        b = st.spec.bdf
        return SimpleNamespace(busId=b.nvml_bus_id, busIdLegacy=f"{b.domain:04X}:{b.bus:02X}:{b.device:02X}.0",
                               domain=b.domain, bus=b.bus, device=b.device,
                               pciDeviceId=(st.spec.device_id << 16) | 0x10DE)

    def nvmlDeviceGetMemoryInfo(self, h: SimHandle, version: Any = None) -> Any:
        st = self._state(h)
        used = 530 * 2**20  # driver-reserved memory on an idle GPU
        return SimpleNamespace(total=st.spec.memory_bytes, used=used, free=st.spec.memory_bytes - used)

    def nvmlDeviceGetTemperature(self, h: SimHandle, sensor: int) -> int:
        return 31 + self._state(h).spec.bdf.bus % 7

    def nvmlDeviceGetPowerUsage(self, h: SimHandle) -> int:
        self._state(h)
        return 71_000

    def nvmlDeviceGetPersistenceMode(self, h: SimHandle) -> int:
        self._state(h)
        return pynvml.NVML_FEATURE_ENABLED

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: SimHandle) -> int:
        st = self._state(h)
        text = (self._kernel.tree.dev(st.spec.bdf) / "current_link_speed").read_text().strip()
        return _GEN.get(text, 0)

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: SimHandle) -> int:
        st = self._state(h)
        return int((self._kernel.tree.dev(st.spec.bdf) / "current_link_width").read_text())

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: SimHandle) -> int:
        return _GEN.get(self._state(h).spec.link_speed, 0)

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: SimHandle) -> int:
        return self._state(h).spec.link_width

    def nvmlDeviceGetTotalEccErrors(self, h: SimHandle, error_type: int, counter: int) -> int:
        self._state(h)
        return 0

    def nvmlDeviceGetRemappedRows(self, h: SimHandle) -> tuple[int, int, int, int]:
        self._state(h)
        return (0, 0, 0, 0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: SimHandle) -> list[Any]:
        self._state(h)
        return []


def _parse_bus_id(bus_id: str) -> PciAddress:
    # NVML accepts "%x:%x:%x.%x" and friends; the simulator accepts the two forms gpusoak sends.
    return PciAddress.parse(bus_id.lower())
