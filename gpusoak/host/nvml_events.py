"""XID events through NVML's event API: a second source beside the kernel log.

Register before the action (events from before registration are lost), drain after it. Where the
API is unsupported the watch is NA with its reason; the kernel log still sees every XID.
"""

from __future__ import annotations

from typing import Any

from gpusoak.errors import GpusoakError
from gpusoak.host import xid as xid_catalog
from gpusoak.host.nvml import NA, Nvml
from gpusoak.model import KernelEvent, PciAddress


class XidWatch:
    def __init__(self, nvml: Nvml, bdf: PciAddress) -> None:
        self.nvml = nvml
        self.bdf = bdf
        self.na: str | None = None
        self._set: Any = None
        lib = nvml.lib
        try:
            handle = nvml.handle(bdf)
            es = nvml.call("nvmlEventSetCreate")
            if isinstance(es, NA):
                self.na = es.reason
                return
            supported = nvml.call("nvmlDeviceGetSupportedEventTypes", handle)
            wanted = lib.nvmlEventTypeXidCriticalError
            if isinstance(supported, NA) or not supported & wanted:
                self.na = "XID events not supported on this device"
                nvml.call("nvmlEventSetFree", es)
                return
            nvml.call("nvmlDeviceRegisterEvents", handle, wanted, es)
            self._set = es
        except (GpusoakError, lib.NVMLError) as err:
            self.na = f"NVML events unavailable: {err}"

    def drain(self) -> list[KernelEvent]:
        """Every XID waiting in the set, as events of kind ``xid`` (text says NVML reported it)."""
        if self._set is None:
            return []
        lib = self.nvml.lib
        out = []
        while True:
            try:
                data = self.nvml.call("nvmlEventSetWait_v2", self._set, 0)
            except lib.NVMLError_Timeout:
                return out
            except (GpusoakError, lib.NVMLError) as err:
                # GPU_IS_LOST can surface here; the cycle's other checks record it.
                self.na = f"NVML event wait failed: {err}"
                return out
            if isinstance(data, NA):
                return out
            number = int(data.eventData)  # 999 when the driver does not know the XID (reference 2.3)
            entry = xid_catalog.lookup(number)
            out.append(KernelEvent("xid", f"NVML event: Xid {number} on {self.bdf}", pci=str(self.bdf),
                                   xid=number, action=entry.action if entry else None))

    def close(self) -> None:
        if self._set is not None:
            try:
                self.nvml.call("nvmlEventSetFree", self._set)
            except (GpusoakError, self.nvml.lib.NVMLError):
                pass  # a lost GPU may refuse; the set dies with the NVML session anyway
            self._set = None
