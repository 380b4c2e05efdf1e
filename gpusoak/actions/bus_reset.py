"""Secondary bus reset through the GPU's upstream port, only where the port holds nothing else.

A bus reset resets everything below the bridge, so it is refused unless every function behind the
port belongs to this GPU. Two kernel routes: with the GPU alone on its bus, ``reset_method`` = bus
and the function's ``reset`` (pci_parent_bus_reset refuses when any other function shares the bus,
the GPU's own audio function included); otherwise the bridge's ``reset_subordinate`` (ABI dated
Oct 2024), which resets all of them together.
"""

from __future__ import annotations

from gpusoak.actions.base import (
    SHARED_DOMAIN,
    UNSUPPORTED,
    Context,
    Step,
    refusals_common,
    slot_functions,
    write,
)
from gpusoak.actions.flr import MethodReset
from gpusoak.host.node import Node
from gpusoak.model import Finding, PciAddress


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
        if self._route(node, bdf) is None:
            return [Finding(UNSUPPORTED, f"no bus reset route: {bdf} shares its bus with its own functions and "
                            f"{port} has no reset_subordinate (Linux 6.13 and later have it)")]
        return []

    def _route(self, node: Node, bdf: PciAddress) -> str | None:
        fn = node.sysfs.function(bdf)
        if len(slot_functions(node, bdf)) == 1 and not self.method_refusals(node, bdf):
            return "function"
        port = fn.upstream_port
        if port is not None and (node.sysfs.function(port).path / "reset_subordinate").exists():
            return "bridge"
        return None

    def steps(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Step]:
        if self._route(node, bdf) == "function":
            return super().steps(node, bdf, ctx)
        port = node.sysfs.function(bdf).upstream_port
        return [Step("write", str(node.sysfs.function(port).path / "reset_subordinate"), "1")]

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        if self._route(node, bdf) == "function":
            return super().perform(node, bdf, ctx)
        port = node.sysfs.function(bdf).upstream_port
        write(node, node.sysfs.function(port).path / "reset_subordinate", "1", ctx, "secondary bus reset")
        return None

