"""Actions that move a GPU between drivers: rebind, the vfio-pci passthrough cycle, remove/rescan.

A GPU's audio and USB functions move with it. Unbinding an NVIDIA GPU blocks while anything holds
it (nv_pci_remove waits for the usage count), so holders are a refusal, and every write has a deadline.
"""

from __future__ import annotations

from pathlib import Path

from gpusoak.actions.base import (
    IOMMU,
    NOT_BOUND,
    UNSUPPORTED,
    Action,
    Context,
    Step,
    driver_path,
    fabric_refusals,
    refusals_common,
    slot_functions,
    write,
)
from gpusoak.errors import GpusoakError, Hung, WriteFailed
from gpusoak.host.node import Node
from gpusoak.host.sysfs import DRIVER_OVERRIDE, REMOVE
from gpusoak.model import Finding, PciAddress

VFIO = "vfio-pci"


def _bindings(node: Node, bdf: PciAddress) -> list[tuple[PciAddress, str | None]]:
    return [(f, node.sysfs.function(f).driver) for f in slot_functions(node, bdf)]


def _bound_refusal(node: Node, bdf: PciAddress) -> list[Finding]:
    if node.sysfs.function(bdf).driver is None:
        return [Finding(NOT_BOUND, f"{bdf} is bound to no driver: nothing to unbind and bind back")]
    return []


class Rebind(Action):
    name = "rebind"

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        return refusals_common(node, bdf, ctx) or _bound_refusal(node, bdf)

    def _plan(self, node: Node, bdf: PciAddress) -> list[tuple[str, PciAddress, str]]:
        bound = [(f, d) for f, d in _bindings(node, bdf) if d]
        # Unbind the companions first and the graphics function last; bind back graphics first.
        unbind = [("unbind", f, d) for f, d in reversed(bound)]
        return unbind + [("bind", f, d) for f, d in bound]

    def steps(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Step]:
        return [Step("write", str(driver_path(node, d, op)), str(f)) for op, f, d in self._plan(node, bdf)]

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        for op, f, d in self._plan(node, bdf):
            write(node, driver_path(node, d, op), str(f), ctx, f"{op} {f} {'from' if op == 'unbind' else 'to'} {d}")


class VfioCycle(Action):
    """Attach to vfio-pci through driver_override and drivers_probe, check /dev/vfio/GROUP, detach
    back to the original drivers (reference 4.6): the passthrough lifecycle of a VM host."""

    name = "vfio_cycle"

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        out = refusals_common(node, bdf, ctx) or _bound_refusal(node, bdf)
        if out:
            return out
        if not driver_path(node, VFIO, "bind").parent.is_dir():
            out.append(Finding(UNSUPPORTED, "the vfio-pci driver is not loaded (modprobe vfio-pci)"))
        fn = node.sysfs.function(bdf)
        if fn.iommu_group is None:
            out.append(Finding(IOMMU, "no IOMMU group: the IOMMU is off (intel_iommu=on or amd_iommu=on)"))
        else:
            mine = set(slot_functions(node, bdf))
            others = [str(b) for b in fn.iommu_group_members() if b not in mine]
            if others:
                out.append(Finding(IOMMU, f"IOMMU group {fn.iommu_group} also holds {', '.join(others)}: "
                                   "all of it would have to go to vfio-pci"))
        return out

    def _probe(self, node: Node) -> object:
        return node.sysfs.root / "bus" / "pci" / "drivers_probe"

    def _saved(self, node: Node, bdf: PciAddress) -> list[tuple[PciAddress, str | None, str | None]]:
        """Each function's driver and driver_override ("(null)" reads as None) before the attach."""
        return [(f, d, node.sysfs.function(f).driver_override) for f, d in _bindings(node, bdf)]

    def _detach_steps(self, node: Node, f: PciAddress, driver: str | None, override: str | None,
                      on_vfio: bool = True) -> list[Step]:
        """Back as found: the saved driver_override (or none), then the saved driver bound by name.
        drivers_probe would bind whichever driver matches first (drivers/base/bus.c, the first
        matching driver wins; a vfio-pci new_id or another loaded driver may), and would bind a
        function that was unbound on purpose."""
        fn = node.sysfs.function(f)
        out = [Step("write", str(fn.path / DRIVER_OVERRIDE), override or "\n")]
        if on_vfio:
            out.append(Step("write", str(driver_path(node, VFIO, "unbind")), str(f)))
        if driver is not None:
            out.append(Step("write", str(driver_path(node, driver, "bind")), str(f)))
        return out

    def steps(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Step]:
        out = []
        saved = self._saved(node, bdf)
        for f, d, _ in saved:
            fn = node.sysfs.function(f)
            out += [Step("write", str(fn.path / DRIVER_OVERRIDE), VFIO)]
            if d:
                out += [Step("write", str(driver_path(node, d, "unbind")), str(f))]
            out += [Step("write", str(self._probe(node)), str(f))]
        for f, d, override in saved:
            out += self._detach_steps(node, f, d, override)
        return out

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        saved = self._saved(node, bdf)
        try:
            for f, d, _ in saved:
                fn = node.sysfs.function(f)
                write(node, fn.path / DRIVER_OVERRIDE, VFIO, ctx, f"driver_override of {f}")
                if d:
                    write(node, driver_path(node, d, "unbind"), str(f), ctx, f"unbind {f} from {d}")
                write(node, self._probe(node), str(f), ctx, f"probe {f}")
            self._check_attached(node, bdf, saved)
        except Hung:
            raise  # a write is still blocked in the kernel: another write to the device would race it
        except BaseException:
            self._detach(node, saved, ctx)  # back to the original drivers, also when the attach went wrong
            raise
        errors = self._detach(node, saved, ctx)
        if errors:
            raise errors[0]

    def _detach(self, node: Node, saved, ctx: Context) -> list[GpusoakError]:
        """Every function is put back even when one of them fails; the failures are returned."""
        errors: list[GpusoakError] = []
        for f, d, override in saved:
            fn = node.sysfs.function(f)
            try:
                for step in self._detach_steps(node, f, d, override, on_vfio=fn.driver == VFIO):
                    if step.target.endswith("/bind") and fn.driver is not None:
                        continue  # still on its own driver (the attach never moved it)
                    write(node, Path(step.target), step.value, ctx, _what(step, f))
            except Hung:
                raise
            except GpusoakError as err:
                errors.append(err)
        return errors

    def _check_attached(self, node: Node, bdf: PciAddress, saved) -> None:
        wrong = [f"{f} ({node.sysfs.function(f).driver or 'unbound'})" for f, _, _ in saved
                 if node.sysfs.function(f).driver != VFIO]
        if wrong:
            raise WriteFailed(f"vfio attach failed: not on vfio-pci: {', '.join(wrong)}")
        group = node.sysfs.function(bdf).iommu_group
        if not (node.dev_root / "vfio" / str(group)).exists():
            raise WriteFailed(f"vfio attach failed: {node.dev_root / 'vfio' / str(group)} does not exist")


def _what(step: Step, f: PciAddress) -> str:
    name = Path(step.target).name
    if name == DRIVER_OVERRIDE:
        return f"restore driver_override of {f} ({step.value.strip() or 'none'})"
    return f"{name} {f} {'from' if name == 'unbind' else 'to'} {Path(step.target).parent.name}"


class RemoveRescan(Action):
    """Remove the GPU's functions, then rescan only the bus they sat on (its upstream port's
    secondary bus): the global /sys/bus/pci/rescan would also re-add every device an operator
    removed on purpose (drivers/pci/pci-sysfs.c, bus_rescan_store; see PciFunction.bus_rescan_file)."""

    name = "remove_rescan"

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        out = refusals_common(node, bdf, ctx) or fabric_refusals(node, bdf, "removing the GPU from the bus")
        if out:
            return out
        rescan = node.sysfs.function(bdf).bus_rescan_file()
        if rescan is None:
            out.append(Finding(UNSUPPORTED, f"{bdf} sits on a root bus (no upstream port): the only rescans "
                               "that would bring it back also re-add devices removed from that bus on purpose"))
        elif not rescan.exists():
            out.append(Finding(UNSUPPORTED, f"{rescan} does not exist: nothing could rescan the port's bus alone"))
        return out

    def _plan(self, node: Node, bdf: PciAddress):
        funcs = list(reversed(slot_functions(node, bdf)))
        rescan = node.sysfs.function(bdf).bus_rescan_file()
        if rescan is None:
            raise WriteFailed(f"{bdf} sits on a root bus: no port-scoped rescan to bring it back")
        return funcs, rescan

    def steps(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Step]:
        funcs, rescan = self._plan(node, bdf)
        return [Step("write", str(node.sysfs.function(f).path / REMOVE), "1") for f in funcs] + \
            [Step("write", str(rescan), "1")]

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        funcs, rescan = self._plan(node, bdf)  # the port is found before its functions are gone
        paths = [node.sysfs.function(f).path / REMOVE for f in funcs]
        for f, path in zip(funcs, paths, strict=True):
            write(node, path, "1", ctx, f"remove {f}")
        write(node, rescan, "1", ctx, f"rescan bus {rescan.parent.name} below {rescan.parents[2].name}")
