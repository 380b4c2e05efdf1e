"""NVML through nvidia-ml-py, every call through one choke point.

``NotSupported`` and a missing function (an older driver) are a value, ``NA`` with its reason.
``GpuIsLost`` and ``ResetRequired`` are what a soak exists to catch: they become a status, never a
skipped check. A missing library or driver is ``NvmlUnavailable``, and NVML checks are skipped with
that reason. Handles are looked up again for every read: after a reset an old handle proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpusoak.errors import AccessDenied, GpusoakError, NvmlFailure, NvmlUnavailable
from gpusoak.model import RECOVERY_ACTIONS, NvmlHealth, PciAddress  # noqa: F401  (value types: gpusoak/model.py)


@dataclass(frozen=True)
class NA:
    """Not available: the device or driver does not support it. Never counts as healthy."""

    reason: str

    def __bool__(self) -> bool:
        return False


# NVML status of one GPU after a lookup.
OK, GPU_LOST, RESET_REQUIRED, NOT_FOUND = "ok", "gpu_lost", "reset_required", "not_found"
DRIVER_NOT_LOADED = "driver_not_loaded"


def _lib():
    import pynvml  # nvidia-ml-py; loading libnvidia-ml.so.1 happens at nvmlInit, not here

    return pynvml


class Nvml:
    """An initialised NVML over ``lib`` (pynvml, or the simulator's pynvml-compatible object)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self._probed: dict[str, str | None] = {}

    @classmethod
    def open(cls, lib: Any | None = None, *, attach: bool = True) -> Nvml:
        """``attach=False``: NVML_INIT_FLAG_NO_ATTACH, for node-level queries that must not open
        any GPU's device file."""
        lib = lib if lib is not None else _lib()
        try:
            if attach:
                lib.nvmlInit()
            else:
                lib.nvmlInitWithFlags(lib.NVML_INIT_FLAG_NO_ATTACH)
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
        fn = getattr(lib, name, None) if name else None
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
        except getattr(lib, "NVMLLibraryMismatchError", _Never) as err:
            # nvidia-ml-py's version-checked calls (the process lists) raise this plain Exception
            # when the driver's NVML lacks the newest symbol: fall back to the older one.
            for older in OLDER.get(name, ()):
                if getattr(lib, older, None) is not None:
                    return self.call(older, *args)
            return NA(f"{name}: {err}")

    def handle(self, bdf: PciAddress) -> Any:
        return self.call("nvmlDeviceGetHandleByPciBusId", bdf.nvml_bus_id)

    # -- reads -------------------------------------------------------------------------------
    def device_minor(self, bdf: PciAddress) -> int | None:
        """The GPU's /dev/nvidia<minor>; None when NVML could not say (lost, unbound, unsupported)."""
        try:
            minor = self.call("nvmlDeviceGetMinorNumber", self.handle(bdf))
        except (GpusoakError, self.lib.NVMLError):
            return None
        return minor if isinstance(minor, int) and not isinstance(minor, bool) else None

    def compute_pids(self, bdf: PciAddress) -> list[int] | None:
        """PIDs of the GPU's compute processes; None when NVML could not say."""
        try:
            procs = self.call("nvmlDeviceGetComputeRunningProcesses", self.handle(bdf))
        except (GpusoakError, self.lib.NVMLError):
            return None
        return None if isinstance(procs, NA) else sorted(int(p.pid) for p in procs or [])

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
            if err.code == getattr(lib, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
                return NvmlHealth(str(bdf), DRIVER_NOT_LOADED)
            raise
        return NvmlHealth(str(bdf), OK, None if isinstance(uuid, NA) else uuid, values, na)

    def fabric_info(self, h: Any) -> dict[str, int] | NA:
        """The GPU's NVLink fabric registration (nvmlDeviceGetGpuFabricInfoV, nvmlGpuFabricInfo_v2_t:
        https://docs.nvidia.com/deploy/nvml-api/structnvmlGpuFabricInfo__v2__t.html): state
        (NVML_GPU_FABRIC_STATE_*), status (an nvmlReturn_t, meaningful once COMPLETED) and
        healthMask (NVML_GPU_FABRIC_HEALTH_MASK_* fields). NA where NVML has no such call or the
        GPU no fabric."""
        import ctypes

        struct = getattr(self.lib, "c_nvmlGpuFabricInfoV_t", None)
        if struct is None:
            return NA("c_nvmlGpuFabricInfoV_t not in this nvidia-ml-py")
        info = struct()
        # A versioned struct: NVML answers ARGUMENT_VERSION_MISMATCH to version 0. nvidia-ml-py
        # 13.x's constructor sets it (nvmlGpuFabricInfo_v2 = 0x02000024); set it where one did not.
        if hasattr(info, "version") and not info.version:
            info.version = getattr(self.lib, "nvmlGpuFabricInfo_v2", ctypes.sizeof(struct) | (2 << 24))
        got = self.call("nvmlDeviceGetGpuFabricInfoV", h, ctypes.byref(info))
        if isinstance(got, NA):
            return got
        return {"state": int(info.state), "status": int(info.status), "health_mask": int(info.healthMask)}

    def nvlink_peers(self, h: Any) -> list[str] | NA:
        """Bus ids at the far end of the GPU's active NVLinks (nvmlDeviceGetNvLinkState, then
        nvmlDeviceGetNvLinkRemotePciInfo_v2, link by link up to NVML_NVLINK_MAX_LINKS; a link index
        past the GPU's last answers INVALID_ARGUMENT). NA where NVML has no NVLink calls."""
        peers: list[str] = []
        for link in range(int(getattr(self.lib, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                active = self.call("nvmlDeviceGetNvLinkState", h, link)
            except NvmlFailure as err:
                if err.code == getattr(self.lib, "NVML_ERROR_INVALID_ARGUMENT", 2):
                    break
                raise
            if isinstance(active, NA):
                return active if link == 0 else peers
            if active != getattr(self.lib, "NVML_FEATURE_ENABLED", 1):
                continue
            remote = self.call("nvmlDeviceGetNvLinkRemotePciInfo", h, link)
            if not isinstance(remote, NA):
                bus_id = remote.busId
                peers.append(bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id))
        return peers

    def probe(self, *names: str) -> str | None:
        """The first of several versioned NVML symbols this driver has; probed once, then cached."""
        key = names[0]
        if key not in self._probed:
            self._probed[key] = next((n for n in names if getattr(self.lib, n, None) is not None), None)
        return self._probed[key]

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

        def field(name: str, *args: Any) -> Any:
            # One field that fails (a driver that predates it, NoPermission on one counter) is NA
            # with its error, not a failed health read: the GPU's status comes from the handle,
            # UUID and memory info alone. Lost and reset-required still end the read.
            try:
                return self.call(name, *args)
            except (NvmlFailure, AccessDenied) as err:
                return NA(f"error: {err}")

        put("name", field("nvmlDeviceGetName", h), str)
        # Identity beside the UUID: /dev/nvidia<minor> (Slurm's gres.conf File=) and NVML's index
        # (nvidia-smi's and, with CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA's numbering): both can change
        # after a remove/rescan or a reload (the minor is assigned at probe, nv.c
        # nv_linux_assign_minor_locked), so each cycle records and compares them.
        put("minor", field("nvmlDeviceGetMinorNumber", h), int)
        put("index", field("nvmlDeviceGetIndex", h), int)
        mem = self.call("nvmlDeviceGetMemoryInfo", h)
        put("memory_total_bytes", mem, lambda m: int(m.total))
        put("memory_used_bytes", mem, lambda m: int(m.used))
        util = field("nvmlDeviceGetUtilizationRates", h)
        put("utilization_gpu_pct", util, lambda u: int(u.gpu))
        put("utilization_memory_pct", util, lambda u: int(u.memory))
        put("temperature_c", field("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU), int)
        put("temperature_slowdown_c", field(
            "nvmlDeviceGetTemperatureThreshold", h, lib.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN), int)
        put("temperature_shutdown_c", field(
            "nvmlDeviceGetTemperatureThreshold", h, lib.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN), int)
        put("power_mw", field("nvmlDeviceGetPowerUsage", h), int)
        put("persistence_mode", field("nvmlDeviceGetPersistenceMode", h),
            lambda v: v == lib.NVML_FEATURE_ENABLED)
        put("pcie_gen_current", field("nvmlDeviceGetCurrPcieLinkGeneration", h), int)
        put("pcie_width_current", field("nvmlDeviceGetCurrPcieLinkWidth", h), int)
        put("pcie_gen_max", field("nvmlDeviceGetMaxPcieLinkGeneration", h), int)
        put("pcie_width_max", field("nvmlDeviceGetMaxPcieLinkWidth", h), int)
        put("pcie_replay_count", field("nvmlDeviceGetPcieReplayCounter", h), int)
        for kind, etype in (("corrected", lib.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                            ("uncorrected", lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            for scope, counter in (("volatile", lib.NVML_VOLATILE_ECC), ("aggregate", lib.NVML_AGGREGATE_ECC)):
                put(f"ecc_{kind}_{scope}", field("nvmlDeviceGetTotalEccErrors", h, etype, counter), int)
        put("retired_pages_sbe", field(
            "nvmlDeviceGetRetiredPages", h, lib.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS), len)
        put("retired_pages_dbe", field(
            "nvmlDeviceGetRetiredPages", h, lib.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR), len)
        put("retired_pages_pending", field("nvmlDeviceGetRetiredPagesPendingStatus", h), bool)
        rows = field("nvmlDeviceGetRemappedRows", h)
        put("remapped_rows_correctable", rows, lambda r: int(r[0]))
        put("remapped_rows_uncorrectable", rows, lambda r: int(r[1]))
        put("remapped_rows_pending", rows, lambda r: bool(r[2]))
        put("remapped_rows_failure", rows, lambda r: bool(r[3]))
        # "ClocksThrottleReasons" was renamed "ClocksEventReasons"; older drivers have only the former.
        reasons_fn = self.probe("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
        reasons = field(reasons_fn, h) if reasons_fn else NA("no clock-event-reasons function")
        put("clock_event_reasons", reasons, int)
        put("clock_events", reasons, decode_clock_events)
        put("recovery_action", _or_na(lambda: self.field_value(h, RECOVERY_ACTION_FIELD)), int)
        procs = field("nvmlDeviceGetComputeRunningProcesses", h)
        put("compute_pids", procs, lambda ps: sorted(int(p.pid) for p in ps))
        return values, na

    def field_value(self, h: Any, field_id: int) -> Any:
        """One nvmlDeviceGetFieldValues entry: its own return code checked, its union read by type."""
        lib = self.lib
        got = self.call("nvmlDeviceGetFieldValues", h, [field_id])
        if isinstance(got, NA):
            return got
        fv = got[0]
        if fv.nvmlReturn != lib.NVML_SUCCESS:
            err = lib.NVMLError(fv.nvmlReturn)
            if isinstance(err, (lib.NVMLError_NotSupported, lib.NVMLError_FunctionNotFound)):
                return NA(f"field {field_id}: {err}")
            raise NvmlFailure(f"NVML field {field_id}: {err}", code=fv.nvmlReturn)
        member = {lib.NVML_VALUE_TYPE_DOUBLE: "dVal", lib.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
                  lib.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal", lib.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
                  lib.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal"}.get(fv.valueType, "siVal")
        return getattr(fv.value, member)


class _Never(Exception):
    """Matches nothing: stands in for an exception class a library version does not have."""


def _or_na(read: Any) -> Any:
    try:
        return read()
    except (NvmlFailure, AccessDenied) as err:
        return NA(f"error: {err}")


# Older symbols to fall back on when nvidia-ml-py's versioned call is newer than the driver.
OLDER = {"nvmlDeviceGetComputeRunningProcesses": ("nvmlDeviceGetComputeRunningProcesses_v2",)}

# NVML_FI_DEV_GET_GPU_RECOVERY_ACTION; replaces the deprecated fields 226 and 227 (reference 2.4).
RECOVERY_ACTION_FIELD = 230

# nvmlClocksEventReason* bits (reference 2.2).
CLOCK_EVENTS = {0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake"}


def decode_clock_events(mask: int) -> list[str]:
    return [name for bit, name in CLOCK_EVENTS.items() if mask & bit]


# -- NVML from the soak's side: every query in a short-lived child ---------------------------------
# Attaching NVML to a GPU opens /dev/nvidiaN (nvmlInit_v2 attaches lazily, in nvmlDeviceGetHandleBy*;
# NVML API reference, "Initialization and Cleanup"), and an open device file is exactly what makes
# nv_pci_remove wait, rmmod refuse and nvidia-smi -r decline (kernel-open/nvidia/nv-pci.c,
# nv_pci_remove: it loops while the usage count is non-zero). So the soak process never holds an
# NVML session: each query runs in a child that attaches one GPU by bus id, answers and exits, with
# a deadline that is also NVML's timeout. Parallel workers need no shared session either.
CHILD = "gpusoak.host.nvml_child"
QUERY_TIMEOUT_S = 30.0


class NvmlClient:
    """The soak's NVML: ``health``, ``device_minor``, ``compute_pids``, ``architecture`` and
    ``driver_version``, each one child process through the node's runner."""

    def __init__(self, runner: Any, timeout_s: float = QUERY_TIMEOUT_S) -> None:
        self.runner = runner
        self.timeout_s = timeout_s

    @classmethod
    def open(cls, runner: Any, timeout_s: float = QUERY_TIMEOUT_S) -> NvmlClient:
        """A client whose library answered a node-level probe (NO_ATTACH); else NvmlUnavailable."""
        client = cls(runner, timeout_s)
        client.driver_version()
        return client

    def close(self) -> None:
        """Nothing is held between queries."""

    def _ask(self, op: str, bdf: PciAddress | None = None) -> Any:
        import json
        import sys

        argv = [sys.executable, "-m", CHILD, op] + ([str(bdf)] if bdf is not None else [])
        where = {"bdf": str(bdf)} if bdf is not None else {}
        result = self.runner.run(argv, timeout_s=self.timeout_s)
        if result.timed_out:
            raise NvmlQueryFailed(f"the NVML query {op!r} did not answer within {self.timeout_s:g} s", **where)
        doc = None
        for line in reversed(result.stdout.strip().splitlines()):
            try:
                doc = json.loads(line)
                break
            except ValueError:
                continue
        if not isinstance(doc, dict) or "ok" not in doc:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise NvmlQueryFailed(f"the NVML query child exited {result.returncode} without an answer: {last}",
                                  **where)
        if doc["ok"]:
            return doc.get("result")
        kind, message, code = doc.get("kind"), str(doc.get("message", "")), doc.get("code")
        if kind == "unavailable":
            raise NvmlUnavailable(message)
        if kind == "denied":
            raise AccessDenied(message, **where)
        raise NvmlFailure(message, code=code, **where)

    def driver_version(self) -> str | None:
        return self._ask("driver")

    def health(self, bdf: PciAddress) -> NvmlHealth:
        return NvmlHealth(**self._ask("health", bdf))

    def device_minor(self, bdf: PciAddress) -> int | None:
        """/dev/nvidia<minor> of the GPU, or None where NVML cannot say (lost, unbound, NA)."""
        return self._optional("minor", bdf)

    def compute_pids(self, bdf: PciAddress) -> list[int] | None:
        return self._optional("pids", bdf)

    def architecture(self, bdf: PciAddress) -> int | None:
        """nvmlDeviceArchitecture_t (NVML_DEVICE_ARCH_AMPERE is 7), or None."""
        return self._optional("arch", bdf)

    def fabric(self, bdf: PciAddress) -> dict[str, int] | None:
        """The GPU's fabric registration ({state, status, health_mask}), None where NVML has none.
        Raises where the query could not be made: the caller decides what not looking means."""
        return self._ask("fabric", bdf)

    def nvlink_peers(self, bdf: PciAddress) -> list[PciAddress] | None:
        """The PCI addresses at the far end of the GPU's active NVLinks; None where NVML cannot say."""
        ids = self._optional("peers", bdf)
        if ids is None:
            return None
        out = []
        for bus_id in ids:
            try:
                out.append(PciAddress.parse(str(bus_id).lower()))
            except GpusoakError:
                continue  # NVML's 8-digit domain form is what PciAddress reads; anything else is not a GPU we know
        return out

    def _optional(self, op: str, bdf: PciAddress) -> Any:
        try:
            return self._ask(op, bdf)
        except (NvmlFailure, NvmlQueryFailed, NvmlUnavailable):
            return None


class NvmlQueryFailed(GpusoakError):
    """gpusoak's own NVML child crashed, printed no answer or ran past its deadline: NVML could not
    look. Never the GPU's failure by itself, and never a pass."""
