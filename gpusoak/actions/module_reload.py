"""Reload the driver modules of the soaked functions, node-wide.

For NVIDIA GPUs (the default selection): unload the modules that hold nvidia, as
/sys/module/*/holders/ says (nvidia_drm before nvidia_modeset; nvidia_uvm, nvidia_peermem), then
nvidia, and load them back in reverse (reference 4.3). Nothing is unloaded unless every module can
be loaded back, as the same driver, and nothing else holds it (``module_guard``). The modules that
were unloaded are loaded back, also after a failure. The GPU services are not this action's: a
destructive run has stopped them before its first cycle and starts them at its end
(gpusoak/actions/services.py, gpusoak/soak.py); one still active refuses. nvidia-fabricmanager
and nvidia-imex hold the driver and are never stopped: while one is active, the reload is refused.

For any other function named with ``--devices``: the module of its driver, found through sysfs
(``/sys/bus/pci/drivers/DRIVER/module``), unloaded and loaded back. A driver built into the kernel
has no module and is refused; so is a module with users (its ``refcnt``), which rmmod would refuse.
"""

from __future__ import annotations

from gpusoak.actions import module_guard, services
from gpusoak.actions.base import (
    DISPLAY,
    DRIVER_SHARED,
    FABRIC_SERVICE,
    GPU_SERVICES,
    MODULE_IN_USE,
    MODULE_NOT_LOADED,
    NOT_BOUND,
    NOT_ROOT,
    SERVICE_ACTIVE,
    UNSUPPORTED,
    Action,
    Context,
    Step,
    check,
    display_attached,
    driver_module,
    holder_refusals,
    run,
)
from gpusoak.errors import GpusoakError, WriteFailed
from gpusoak.host.node import Node
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.model import Finding, PciAddress


class ModuleReload(Action):
    name = "module_reload"
    scope = "node"

    def for_nvidia(self, node: Node, ctx: Context) -> bool:
        """Is the NVIDIA stack reloaded? Yes for the default selection and whenever a GPU is named."""
        return not ctx.devices or any(node.sysfs.function(d).vendor == NVIDIA_VENDOR for d in ctx.devices)

    def nvidia_loaded(self, node: Node) -> list[str]:
        """nvidia and the modules that hold it, in unload order, from /sys/module/*/holders/."""
        return module_guard.nvidia_stack(node)[0]

    def other_modules(self, node: Node, ctx: Context) -> tuple[list[str], list[Finding]]:
        """The modules of the other named functions' drivers, and why any cannot be reloaded."""
        modules: list[str] = []
        why: list[Finding] = []
        for d in ctx.devices:
            if node.sysfs.function(d).vendor == NVIDIA_VENDOR:
                continue
            driver, module = driver_module(node, d)
            if driver is None:
                why.append(Finding(NOT_BOUND, f"{d} has no driver bound: there is no module to reload"))
            elif module is None:
                why.append(Finding(UNSUPPORTED, f"{d}'s driver {driver} is built into the kernel: there is no "
                                   "module to reload"))
            elif module not in modules:
                modules.append(module)
        return modules, why

    def loaded(self, node: Node, ctx: Context) -> list[str]:
        """What is unloaded, in order (and loaded back in reverse)."""
        nvidia = self.nvidia_loaded(node) if self.for_nvidia(node, ctx) else []
        return nvidia + [m for m in self.other_modules(node, ctx)[0] if m not in nvidia]

    def active_services(self, node: Node, ctx: Context) -> list[str]:
        if not self.for_nvidia(node, ctx):
            return []
        return services.active(node, GPU_SERVICES, ctx.command_timeout_s)

    def refusals(self, node: Node, bdf: PciAddress | None, ctx: Context) -> list[Finding]:
        out = []
        if not node.is_root:
            out.append(Finding(NOT_ROOT, "rmmod and modprobe need root"))
        others, why = self.other_modules(node, ctx)
        out += why
        reloaded = self.loaded(node, ctx)
        for m in others:
            if used := self.other_in_use(node, m):
                out.append(Finding(MODULE_IN_USE, used))
        wanted = set(ctx.devices)
        for d in ctx.devices:
            driver, module = driver_module(node, d)
            if module not in others:
                continue
            others.remove(module)  # once per module
            bystanders = [str(b) for b in self.bound_to(node, driver) if b not in wanted]
            if bystanders:
                out.append(Finding(DRIVER_SHARED, f"unloading {module} would also unbind {', '.join(bystanders)} "
                                   f"from {driver}, which this run does not soak"))
        if not self.for_nvidia(node, ctx):
            return out + holder_refusals(node, None, ctx) + module_guard.load_back_refusals(node, reloaded, ctx)
        if "nvidia" not in self.nvidia_loaded(node):
            out.append(Finding(MODULE_NOT_LOADED, "the nvidia module is not loaded"))
            return out
        out += module_guard.nvidia_stack(node)[1]
        pending = ctx.stop_services and not ctx.services_stopped
        out += holder_refusals(node, None, ctx, services.excused_pids(node, pending, ctx.command_timeout_s))
        for g in node.gpus():
            if why_display := display_attached(node, g):
                out.append(Finding(DISPLAY, f"{g}: {why_display}"))
        active = self.active_services(node, ctx)
        if not (active and pending) and (why_used := self.in_use(node)):
            out.append(Finding(MODULE_IN_USE, why_used))
        if active and not ctx.stop_services:
            out.append(Finding(SERVICE_ACTIVE, f"{', '.join(active)} active; they hold the driver, and "
                               "--keep-services keeps them running"))
        elif active and ctx.services_stopped:
            out.append(Finding(SERVICE_ACTIVE, f"{', '.join(active)} active although this run stopped the GPU "
                               "services before its first cycle (the stop failed, or something started them again)"))
        if fabric := services.active(node, services.NEVER_STOPPED, ctx.command_timeout_s):
            # First: the reason that decides, a fact of this node for the whole run.
            out.insert(0, Finding(FABRIC_SERVICE, f"{', '.join(fabric)} active; gpusoak never stops them (the NVSwitch "
                                  "fabric and the IMEX domain need them) and rmmod nvidia fails while they hold the driver"))
        if ctx.devices and (left := [str(g) for g in node.gpus() if g not in set(ctx.devices)]):
            out.append(Finding(DRIVER_SHARED, f"reloading nvidia would also unbind {', '.join(left)}, which "
                               "this run does not soak"))
        return out + module_guard.load_back_refusals(node, reloaded, ctx)

    def bound_to(self, node: Node, driver: str | None) -> list[PciAddress]:
        """The PCI functions a driver drives now (the BDF entries of its sysfs folder)."""
        if driver is None:
            return []
        try:
            names = [p.name for p in (node.sysfs.root / "bus" / "pci" / "drivers" / driver).iterdir()]
        except OSError:
            return []
        out = []
        for name in names:
            try:
                out.append(PciAddress.parse(name))
            except GpusoakError:
                continue
        return sorted(out)

    def other_in_use(self, node: Node, module: str) -> str | None:
        """A module with users cannot be unloaded: its refcnt, and the modules that hold it."""
        base = node.sysfs.root / "module" / module
        text = node.sysfs.read(base / "refcnt")
        if text is None or not text.strip().isdigit() or int(text) == 0:
            return None
        try:
            holders = sorted(p.name for p in (base / "holders").iterdir())
        except OSError:
            holders = []
        by = f"; used by {', '.join(holders)}" if holders else ""
        return f"the {module} module is in use (refcnt {text.strip()}{by})"

    def in_use(self, node: Node) -> str | None:
        """nvidia's refcnt counts the modules that use it (its holders, each its own refusal when
        gpusoak does not reload it) and every open of its device files; what is left beyond the
        holders is a user rmmod would refuse. Judged only with no GPU service active (a service's
        hold is stopped first, when allowed)."""
        text = node.sysfs.read(node.sysfs.root / "module" / "nvidia" / "refcnt")
        if text is None or not text.strip().isdigit():
            return None
        dependents = len(module_guard.holders(node, "nvidia") or [])
        extra = int(text) - dependents
        if extra > 0:
            return f"the nvidia module has {extra} user(s) beyond its dependent modules (refcnt {text.strip()})"
        return None

    def steps(self, node: Node, bdf: PciAddress | None, ctx: Context) -> list[Step]:
        modules = self.loaded(node, ctx)
        return ([Step("command", f"rmmod {m}") for m in modules]
                + [Step("command", f"modprobe {m}") for m in reversed(modules)])

    def perform(self, node: Node, bdf: PciAddress | None, ctx: Context) -> None:
        modules = self.loaded(node, ctx)
        unloaded: list[str] = []
        try:
            for m in modules:
                result = run(node, ["rmmod", m], ctx, f"unloading {m}")
                in_use = not result.ok and "in use" in (result.stderr + result.stdout)
                check(result, f"unloading {m}", reason=MODULE_IN_USE if in_use else None)
                unloaded.append(m)
        finally:
            errors = []
            for m in reversed(unloaded):
                try:
                    check(run(node, ["modprobe", m], ctx, f"loading {m}"), f"loading {m}")
                except GpusoakError as err:
                    errors.append(str(err))
        if errors:
            raise WriteFailed("; ".join(errors))
