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
    BUS_BUSY,
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
from gpusoak.errors import Busy, WriteFailed
from gpusoak.host.node import Node
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.model import Finding, PciAddress

# How long to wait before the one retry of a bridge reset the kernel answered EAGAIN: the bus lock
# is held by another reset or a rescan of the same bus, which take a second or so (the simulator's
# figure, not measured [I]).
BUS_BUSY_RETRY_S = 1.0


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
        return bridge_reset(node, node.sysfs.function(bdf).upstream_port, ctx)


def bridge_reset(node: Node, port: PciAddress, ctx: Context) -> None:
    """``reset_subordinate`` of the port, with the two answers the kernel gives after the write:

    - EAGAIN: ``__pci_reset_bus`` (drivers/pci/pci.c) could not take the bus lock
      (``pci_bus_trylock``; "return -EAGAIN if the bus cannot be locked"): nothing was reset. Retried
      once after a short wait; busy again, the reset did not run and the cycle is skipped (``Busy``).
    - ENOTTY: the same code as the NO_BUS_RESET quirk (``pci_bus_resettable``), but the quirk is
      refused before the write (``refusals``), so here it is ``pci_bridge_wait_for_secondary_bus``:
      a device below did not come back. A failure, never "unsupported".
    """
    path = node.sysfs.function(port).path / "reset_subordinate"
    for attempt in (1, 2):
        try:
            write(node, path, "1", ctx, "secondary bus reset")
            return
        except WriteFailed as err:
            if err.errno == "EAGAIN" and attempt == 1:
                node.clock.sleep(BUS_BUSY_RETRY_S)
                continue
            if err.errno == "EAGAIN":
                raise Busy(f"the bus lock below {port} stayed busy (EAGAIN, retried once after "
                           f"{BUS_BUSY_RETRY_S:g} s): the bus reset did not run", reason=BUS_BUSY,
                           path=str(path)) from err
            if err.errno == "ENOTTY":
                raise WriteFailed(f"ENOTTY after the bus reset of {port}: a device below did not come back "
                                  "(pci_bridge_wait_for_secondary_bus); not the NO_BUS_RESET quirk, which is "
                                  "refused before the write", errno="ENOTTY", path=str(path)) from err
            raise

