"""A pynvml-compatible object over the simulated kernel.

It has pynvml's function names, constants and exception classes (the real ``NVMLError_*``
classes, imported from nvidia-ml-py), so gpusoak.host.nvml runs unchanged against it.

Attachment is modelled as the driver sees it: ``nvmlInit`` opens ``/dev/nvidiactl`` and taking a
handle (``nvmlDeviceGetHandleBy*``, where nvmlInit_v2 attaches lazily: NVML API reference,
"Initialization and Cleanup") opens that GPU's ``/dev/nvidiaN``, both in the calling process's
entry of the simulated process table, until ``nvmlShutdown`` (or the process's exit). So an NVML
session left open in the soak process is a holder the holder scan, the unbind, ``rmmod`` and
``nvidia-smi -r`` all see, as on a real node. A handle taken before an unbind, remove or module
reload of its GPU is stale afterwards; it answers GPU_IS_LOST (an inference: the device state it
was attached to is gone; strict, so code that keeps handles fails here first).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pynvml

from gpusoak.errors import GpusoakError
from gpusoak.model import PciAddress
from gpusoak.sim import driver_reset, fabric
from gpusoak.sim.kernel import GpuState, SimKernel

# What a healthy H100 reads; a scenario's [gpu.health] table overrides any of these.
# [U] illustrative values, not taken from a measured node.
HEALTH: dict[str, Any] = {
    "temperature_c": 33, "temperature_slowdown_c": 87, "temperature_shutdown_c": 92, "power_mw": 71_000,
    "utilization_gpu_pct": 0, "utilization_memory_pct": 0, "persistence_mode": True,
    "pcie_replay_count": 0, "ecc_corrected_volatile": 0, "ecc_uncorrected_volatile": 0,
    "ecc_corrected_aggregate": 0, "ecc_uncorrected_aggregate": 0,
    "retired_pages_sbe": 0, "retired_pages_dbe": 0, "retired_pages_pending": False,
    "remapped_rows_correctable": 0, "remapped_rows_uncorrectable": 0, "remapped_rows_pending": False,
    "remapped_rows_failure": False, "clock_event_reasons": 0x1, "recovery_action": 0,
    "sm_clock_mhz": 1980,
}

_GEN = {"2.5 GT/s PCIe": 1, "5.0 GT/s PCIe": 2, "8.0 GT/s PCIe": 3, "16.0 GT/s PCIe": 4,
        "32.0 GT/s PCIe": 5, "64.0 GT/s PCIe": 6}


@dataclass(frozen=True)
class SimHandle:
    bdf: PciAddress
    generation: int = 0  # the GPU's attach generation when the handle was taken


class SimEventSet:
    """An NVML event set: XIDs of the registered devices queue here until waited for."""

    def __init__(self) -> None:
        self.devices: set[PciAddress] = set()
        self.queue: list[tuple[PciAddress, int]] = []

    def deliver(self, bdf: PciAddress, xid: int) -> None:
        if bdf in self.devices:
            self.queue.append((bdf, xid))


class SimNvmlLib:
    """Only what gpusoak calls is here; anything else raises FunctionNotFound, as an old driver does."""

    def __init__(self, kernel: SimKernel, pid: int | None = None) -> None:
        self._kernel = kernel
        self._inits = 0
        self.pid = kernel.procs.self_pid if pid is None else pid  # the process NVML runs in
        self._fds: dict[str, int] = {}  # device node -> descriptor this session holds open
        self._no_attach = False

    def __getattribute__(self, name: str) -> Any:
        # A device function the scenario (or a test, through SimKernel.fail_nvml) makes fail on
        # one GPU raises there what NVML would: any pynvml error, or nvidia-ml-py's
        # NVMLLibraryMismatchError for a version-checked call on an older driver.
        attr = object.__getattribute__(self, name)
        if not name.startswith("nvmlDevice") or not callable(attr):
            return attr
        errors = object.__getattribute__(self, "_kernel").nvml_errors
        if not errors:
            return attr

        def failing(*args: Any, **kw: Any) -> Any:
            h = args[0] if args else None
            error = errors.get((h.bdf, name)) if isinstance(h, SimHandle) else None
            if error == "LibraryMismatch":
                raise pynvml.NVMLLibraryMismatchError(f"{name}: the driver's NVML lacks this version")
            if error is not None:
                raise getattr(pynvml, f"NVMLError_{error}")()
            return attr(*args, **kw)
        return failing

    def __getattr__(self, name: str) -> Any:
        # Exception classes and constants are pynvml's own.
        real = getattr(pynvml, name, None)
        if name.startswith(("NVMLError", "NVML_", "nvmlExceptionClass", "NVMLLibraryMismatchError")) or (
                real is not None and not callable(real)):  # constants such as nvmlEventTypeXidCriticalError
            return real if real is not None else getattr(pynvml, name)
        if name.startswith("nvml"):
            # reference 2.1: pynvml raises NVMLError_FunctionNotFound when the library lacks the
            # symbol (an older driver); every function not modelled here is treated so [I].
            def missing(*_args: Any, **_kw: Any) -> Any:
                raise pynvml.NVMLError_FunctionNotFound()
            return missing
        raise AttributeError(name)

    # -- library ------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags: int) -> None:
        # NVML API reference, nvmlInit_v2/nvmlInitWithFlags: "NVML_ERROR_DRIVER_NOT_LOADED if NVIDIA
        # driver is not running" (reference 2.1, code 9). With no libnvidia-ml.so at all pynvml
        # raises LibraryNotFound instead; the simulated node always has the library [I].
        if "nvidia" not in self._kernel.modules:
            raise pynvml.NVMLError_DriverNotLoaded()
        self._inits += 1
        self._no_attach = bool(flags & pynvml.NVML_INIT_FLAG_NO_ATTACH)
        self._attach("nvidiactl")

    def nvmlShutdown(self) -> None:
        # NVML API reference, Initialization and Cleanup: "A reference count of the number of
        # initializations is maintained. Shutdown only occurs when the reference count reaches
        # zero." The header adds "no error is reported if nvmlShutdown() is called more times than
        # nvmlInit()"; raising Uninitialized here is stricter than the real library [I].
        if self._inits == 0:
            raise pynvml.NVMLError_Uninitialized()
        self._inits -= 1
        if self._inits == 0:  # reference-counted: the last shutdown closes the device files
            for fd in self._fds.values():
                self._kernel.procs.close(self.pid, fd)
            self._fds.clear()

    def _attach(self, device: str) -> None:
        if device not in self._fds:
            self._fds[device] = self._kernel.procs.open(self.pid, device)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._ready()
        return self._kernel.scenario.driver

    def _ready(self) -> None:
        if self._inits == 0:
            raise pynvml.NVMLError_Uninitialized()

    def _state(self, handle: SimHandle) -> GpuState:
        self._driver()
        st = self._kernel.gpus.get(handle.bdf)
        if st is None:
            raise pynvml.NVMLError_InvalidArgument()
        if not st.alive or handle.generation != st.generation or not driver_reset.use(self._kernel, st):
            raise pynvml.NVMLError_GpuIsLost()
        return st

    # -- devices -------------------------------------------------------------------------------
    def _driver(self) -> None:
        self._ready()
        if "nvidia" not in self._kernel.modules:
            raise pynvml.NVMLError_DriverNotLoaded()

    def nvmlDeviceGetArchitecture(self, h: SimHandle) -> int:
        arch = self._state(h).spec.arch
        return getattr(pynvml, f"NVML_DEVICE_ARCH_{arch.upper()}", pynvml.NVML_DEVICE_ARCH_UNKNOWN)

    def nvmlDeviceGetCount(self) -> int:
        # [I] NVML counts the GPUs the driver has (reference 2.2: including NO_PERMISSION ones);
        # here that is the GPUs bound to nvidia.
        self._ready()
        return sum(1 for b in self._kernel.gpus if self._bound(b))

    def _bound(self, bdf: PciAddress) -> bool:
        return self._kernel.driver_of(bdf) == "nvidia"

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> SimHandle:
        # NVML API reference, nvmlDeviceGetHandleByPciBusId_v2 return values: INVALID_ARGUMENT "if
        # pciBusId is invalid", NOT_FOUND "if pciBusId does not match a valid device on the
        # system"; GPU_IS_LOST (reference 2.2). An unbound or removed GPU being NOT_FOUND is [I].
        self._driver()
        try:
            bdf = _parse_bus_id(bus_id)
        except GpusoakError:
            raise pynvml.NVMLError_InvalidArgument() from None
        st = self._kernel.gpus.get(bdf)
        if st is None or st.removed or not self._bound(bdf):
            raise pynvml.NVMLError_NotFound()
        handle = SimHandle(bdf, st.generation)
        self._state(handle)
        if not self._no_attach:
            self._attach(f"nvidia{self._kernel.minor(bdf)}")
        return handle

    def nvmlDeviceGetUUID(self, h: SimHandle) -> str:
        return self._state(h).spec.uuid

    def nvmlDeviceGetName(self, h: SimHandle) -> str:
        return self._state(h).spec.model

    def nvmlDeviceGetMinorNumber(self, h: SimHandle) -> int:
        # The minor the driver assigned at probe (SimKernel.minor): /dev/nvidia<minor>.
        return self._kernel.minor(self._state(h).spec.bdf)

    def nvmlDeviceGetIndex(self, h: SimHandle) -> int:
        # NVML API reference, nvmlDeviceGetIndex: "The order in which NVML enumerates devices has
        # no guarantees of consistency between reboots"; the index is the device's place in
        # nvmlDeviceGetHandleByIndex's enumeration. Ordered here by PCI bus id over the GPUs bound
        # to nvidia (what nvidia-smi shows), so a GPU gone below another shifts it [U: the order].
        st = self._state(h)
        return self._kernel.nvml_index(st.spec.bdf)

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

    def _h(self, h: SimHandle, key: str) -> Any:
        return self._state(h).health[key]

    def nvmlDeviceGetTemperature(self, h: SimHandle, sensor: int) -> int:
        return self._h(h, "temperature_c")

    def nvmlDeviceGetTemperatureThreshold(self, h: SimHandle, which: int) -> int:
        key = "temperature_slowdown_c" if which == pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN else "temperature_shutdown_c"
        return self._h(h, key)

    def nvmlDeviceGetUtilizationRates(self, h: SimHandle) -> Any:
        return SimpleNamespace(gpu=self._h(h, "utilization_gpu_pct"), memory=self._h(h, "utilization_memory_pct"))

    def nvmlDeviceGetPowerUsage(self, h: SimHandle) -> int:
        return self._h(h, "power_mw")

    def nvmlDeviceGetClockInfo(self, h: SimHandle, clock_type: int) -> int:
        """nvml.h nvmlDeviceGetClockInfo: the current clock in MHz; only the SM clock (NVML_CLOCK_SM)
        is modelled, any other type is NVML_ERROR_NOT_SUPPORTED here [U: which types a part has]."""
        if clock_type != pynvml.NVML_CLOCK_SM:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._h(h, "sm_clock_mhz")

    def nvmlDeviceGetPersistenceMode(self, h: SimHandle) -> int:
        return pynvml.NVML_FEATURE_ENABLED if self._h(h, "persistence_mode") else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetPcieReplayCounter(self, h: SimHandle) -> int:
        return self._h(h, "pcie_replay_count")

    def nvmlDeviceGetRetiredPages(self, h: SimHandle, cause: int) -> list[int]:
        dbe = cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
        count = self._h(h, "retired_pages_dbe" if dbe else "retired_pages_sbe")
        return [0x1000 * (i + 1) for i in range(count)]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: SimHandle) -> int:
        return int(self._h(h, "retired_pages_pending"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: SimHandle) -> int:
        return self._h(h, "clock_event_reasons")

    def nvmlDeviceGetFieldValues(self, h: SimHandle, field_ids: list[int]) -> list[Any]:
        out = []
        # reference 2.4: NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (230), values NVML_GPU_RECOVERY_ACTION_*;
        # each entry's nvmlReturn is checked per field (reference 2.2). Answering every other
        # field NOT_SUPPORTED is the simulator's [I].
        for fid in field_ids:
            if fid == pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION:
                out.append(SimpleNamespace(fieldId=fid, nvmlReturn=pynvml.NVML_SUCCESS,
                                           valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_INT,
                                           value=SimpleNamespace(uiVal=self._h(h, "recovery_action"))))
            else:
                out.append(SimpleNamespace(fieldId=fid, nvmlReturn=pynvml.NVML_ERROR_NOT_SUPPORTED,
                                           valueType=0, value=SimpleNamespace()))
        return out

    # -- events (reference 2.3) ----------------------------------------------------------------
    def nvmlEventSetCreate(self) -> SimEventSet:
        self._ready()
        es = SimEventSet()
        self._kernel.event_sets.append(es)
        return es

    def nvmlDeviceGetSupportedEventTypes(self, h: SimHandle) -> int:
        self._state(h)
        return (pynvml.nvmlEventTypeSingleBitEccError | pynvml.nvmlEventTypeDoubleBitEccError
                | pynvml.nvmlEventTypeXidCriticalError)

    def nvmlDeviceRegisterEvents(self, h: SimHandle, mask: int, es: SimEventSet) -> None:
        self._state(h)
        if mask & pynvml.nvmlEventTypeXidCriticalError:
            es.devices.add(h.bdf)

    def nvmlEventSetWait_v2(self, es: SimEventSet, timeout_ms: int) -> Any:
        if not es.queue:
            raise pynvml.NVMLError_Timeout()
        bdf, xid = es.queue.pop(0)
        return SimpleNamespace(device=SimHandle(bdf), eventType=pynvml.nvmlEventTypeXidCriticalError,
                               eventData=xid, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)

    nvmlEventSetWait = nvmlEventSetWait_v2

    def nvmlEventSetFree(self, es: SimEventSet) -> None:
        if es in self._kernel.event_sets:
            self._kernel.event_sets.remove(es)

    # PCIe link: the current values "may be reduced when the GPU is not in use" and the maxima
    # are "for device + system" (reference 2.2, NVML API reference). Reading the current ones
    # from the function's sysfs link files and the maxima from the GPU's spec is [I].
    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: SimHandle) -> int:
        st = self._state(h)
        text = (self._kernel.tree.dev(st.spec.bdf) / "current_link_speed").read_text().strip()
        return _GEN.get(text, 0)

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: SimHandle) -> int:
        st = self._state(h)
        return int((self._kernel.tree.dev(st.spec.bdf) / "current_link_width").read_text())

    # "device + system" maxima (reference 2.2): the lesser of the GPU's and its port's capability.
    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: SimHandle) -> int:
        return _GEN.get(self._state(h).spec.trained_speed, 0)

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: SimHandle) -> int:
        return self._state(h).spec.trained_width

    def nvmlDeviceGetTotalEccErrors(self, h: SimHandle, error_type: int, counter: int) -> int:
        kind = "corrected" if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else "uncorrected"
        scope = "volatile" if counter == pynvml.NVML_VOLATILE_ECC else "aggregate"
        return self._h(h, f"ecc_{kind}_{scope}")

    def nvmlDeviceGetRemappedRows(self, h: SimHandle) -> tuple[int, int, int, int]:
        g = self._state(h).health
        return (g["remapped_rows_correctable"], g["remapped_rows_uncorrectable"],
                int(g["remapped_rows_pending"]), int(g["remapped_rows_failure"]))

    def nvmlDeviceGetComputeRunningProcesses(self, h: SimHandle) -> list[Any]:
        self._state(h)
        return []

    # NVML API reference, nvmlDeviceGetGpuFabricInfoV: fills a caller's nvmlGpuFabricInfo_v2_t (its
    # version field set); nvidia-ml-py passes the structure by reference. sim.fabric says what it holds.
    c_nvmlGpuFabricInfoV_t = pynvml.c_nvmlGpuFabricInfoV_t

    def nvmlDeviceGetGpuFabricInfoV(self, h: SimHandle, info: Any) -> int:
        st = self._state(h)
        if not self._kernel.scenario.nvswitches:
            raise pynvml.NVMLError_NotSupported()  # [U] a GPU outside any NVLink fabric
        out = getattr(info, "_obj", info)  # ctypes.byref(struct) or the struct itself
        if getattr(out, "version", 1) != pynvml.nvmlGpuFabricInfo_v2:
            # NVML's versioned structs: a version it does not know is ARGUMENT_VERSION_MISMATCH
            # (nvml.h, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH"); which versions a driver takes is [U].
            raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        out.state = fabric.state(self._kernel, st)
        out.status = pynvml.NVML_SUCCESS
        out.healthMask = 0  # [I] every health field NOT_SUPPORTED: nothing unhealthy to report
        return pynvml.NVML_SUCCESS

    # NVLink (NVML API reference, nvmlDeviceGetNvLinkState / nvmlDeviceGetNvLinkRemotePciInfo_v2;
    # nvidia-ml-py's nvmlDeviceGetNvLinkRemotePciInfo calls the _v2 symbol). Peers are the
    # scenario's nvlink_peers, either side naming the other, one link each; a link index past the
    # GPU's links is InvalidArgument and an unused link reads disabled [U].
    NVLINK_LINKS = 6  # [U] links per GPU in the simulator

    def _peers(self, h: SimHandle) -> list[PciAddress]:
        st = self._state(h)
        return nvlink_peers(self._kernel, st.spec.bdf)

    def nvmlDeviceGetNvLinkState(self, h: SimHandle, link: int) -> int:
        peers = self._peers(h)
        if not 0 <= link < self.NVLINK_LINKS:
            raise pynvml.NVMLError_InvalidArgument()
        return pynvml.NVML_FEATURE_ENABLED if link < len(peers) else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: SimHandle, link: int) -> Any:
        peers = self._peers(h)
        if not 0 <= link < len(peers):
            raise pynvml.NVMLError_InvalidArgument()
        b = peers[link]
        return SimpleNamespace(busId=b.nvml_bus_id, domain=b.domain, bus=b.bus, device=b.device)

    # nvidia-ml-py's unversioned name calls the newest symbol; _v2 is the older one, which an older
    # driver's NVML has (nvidia-ml-py: nvmlDeviceGetComputeRunningProcesses_v2).
    nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses


def nvlink_peers(kernel: SimKernel, bdf: PciAddress) -> list[PciAddress]:
    """The GPUs NVLink-connected to ``bdf``: its scenario peers and those naming it, in bus order."""
    mine = set(kernel.gpus[bdf].spec.nvlink_peers) if bdf in kernel.gpus else set()
    theirs = {g.bdf for g in kernel.scenario.gpus if bdf in g.nvlink_peers}
    return sorted((mine | theirs) - {bdf})


def _parse_bus_id(bus_id: str) -> PciAddress:
    # NVML accepts "%x:%x:%x.%x" and friends; the simulator accepts the two forms gpusoak sends.
    return PciAddress.parse(bus_id.lower())
