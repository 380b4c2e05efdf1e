"""Secondary bus reset through the GPU's upstream port, only where the port holds nothing else.

A bus reset resets everything below the bridge, so it is refused unless every function behind the
port belongs to this GPU. Two kernel routes: with the GPU alone on its bus, ``reset_method`` = bus
and the function's ``reset`` (pci_parent_bus_reset refuses when any other function shares the bus,
the GPU's own audio function included); otherwise the bridge's ``reset_subordinate`` (ABI dated
Oct 2024), which resets all of them together. Either way the slot is unbound from ``nvidia``
first and bound back after (gpusoak/actions/release.py).
"""

from __future__ import annotations

from gpusoak.actions import release
from gpusoak.actions.base import (
    SHARED_DOMAIN,
    UNSUPPORTED,
    Context,
    Step,
    fabric_refusals,
    refusals_common,
    slot_functions,
    write,
)
from gpusoak.actions.flr import MethodReset
from gpusoak.host.node import Node
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.model import Finding, PciAddress


def no_bus_reset_quirk(device_id: int) -> bool:
    """NVIDIA ids the kernel flags PCI_DEV_FLAGS_NO_BUS_RESET: (id & 0xffc0) == 0x2340 (reference 6;
    a T4 entry was added and reverted, so only this range is assumed)."""
    return (device_id & 0xFFC0) == 0x2340


class BusReset(MethodReset):
    name = "bus_reset"
    method = "bus"

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        out = refusals_common(node, bdf, ctx)
        if out:
            return out
        fn = node.sysfs.function(bdf)
        port = fn.upstream_port
        if port is None:
            return [Finding(SHARED_DOMAIN, "the GPU sits on a root bus: a bus reset would reset the whole bus")]
        foreign = [str(b) for b in fn.behind_upstream_port() if b.slot != bdf.slot]
        if foreign:
            return [Finding(SHARED_DOMAIN, f"a bus reset through {port} would also reset {', '.join(foreign)}")]
        if fabric := fabric_refusals(node, bdf, "a secondary bus reset"):
            return fabric
        # Known before anything is written: the kernel refuses a bus with a NO_BUS_RESET device on
        # it (drivers/pci/quirks.c quirk_nvidia_no_bus_reset; pci_bus_resettable: -ENOTTY), and
        # that ENOTTY must never be read as the GPU not coming back, nor the GPU's failure.
        quirked = [f"{b} (device 0x{d:04x})" for b in [bdf, *fn.behind_upstream_port()]
                   if node.sysfs.function(b).vendor == NVIDIA_VENDOR
                   and (d := node.sysfs.function(b).device_id) is not None and no_bus_reset_quirk(d)]
        if quirked:
            return [Finding(UNSUPPORTED, f"the kernel marks {', '.join(dict.fromkeys(quirked))} NO_BUS_RESET "
                            "(quirk_nvidia_no_bus_reset, device ids 0x2340-0x237f): it refuses the bus reset")]
        if self._route(node, bdf) is None:
            return [Finding(UNSUPPORTED, f"no bus reset route: {bdf} shares its bus with its own functions and "
                            f"{port} has no reset_subordinate (Linux 6.13 and later have it)")]
        return release.refusals(node, bdf)

    def _route(self, node: Node, bdf: PciAddress) -> str | None:
        fn = node.sysfs.function(bdf)
        if len(slot_functions(node, bdf)) == 1 and not self.method_refusals(node, bdf):
            return "function"
        port = fn.upstream_port
        if port is not None and (node.sysfs.function(port).path / "reset_subordinate").exists():
            return "bridge"
        return None

    def reset_steps(self, node: Node, bdf: PciAddress) -> list[Step]:
        if self._route(node, bdf) == "function":
            return super().reset_steps(node, bdf)
        port = node.sysfs.function(bdf).upstream_port
        return [Step("write", str(node.sysfs.function(port).path / "reset_subordinate"), "1")]

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        # The route is chosen before the unbind: unbinding changes nothing the route depends on.
        route = self._route(node, bdf)
        release.perform(node, bdf, ctx, lambda: self._reset_by(route, node, bdf, ctx), "bus reset")

    def _reset_by(self, route: str | None, node: Node, bdf: PciAddress, ctx: Context) -> None:
        if route == "function":
            return self.reset(node, bdf, ctx)
        port = node.sysfs.function(bdf).upstream_port
        write(node, node.sysfs.function(port).path / "reset_subordinate", "1", ctx, "secondary bus reset")
        return None

