"""Reload the NVIDIA driver stack, node-wide (reference 4.3 for the order).

Unload nvidia_drm, nvidia_modeset, nvidia_uvm and nvidia_peermem, then nvidia (each that is loaded),
and load them back in reverse. GPU services are stopped first only when the user allows it, and are
started again afterwards, also after a failure; so are the modules that were unloaded.
"""

from __future__ import annotations

from gpusoak.actions.base import (
    DISPLAY,
    GPU_SERVICES,
    HELD,
    MODULE_IN_USE,
    MODULE_NOT_LOADED,
    NOT_ROOT,
    SERVICE_ACTIVE,
    Action,
    Context,
    Step,
    check,
    display_attached,
    gpu_holders,
    run,
    service_active,
)
from gpusoak.errors import GpusoakError, WriteFailed
from gpusoak.host import procs
from gpusoak.host.node import Node
from gpusoak.model import Finding, PciAddress

UNLOAD_ORDER = ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia_peermem", "nvidia")


class ModuleReload(Action):
    name = "module_reload"
    scope = "node"

    def loaded(self, node: Node) -> list[str]:
        return [m for m in UNLOAD_ORDER if (node.sysfs.root / "module" / m).is_dir()]

    def active_services(self, node: Node, ctx: Context) -> list[str]:
        return [u for u in GPU_SERVICES if service_active(node, u, ctx)]

    def refusals(self, node: Node, bdf: PciAddress | None, ctx: Context) -> list[Finding]:
        out = []
        if not node.is_root:
            out.append(Finding(NOT_ROOT, "rmmod and modprobe need root"))
        if "nvidia" not in self.loaded(node):
            out.append(Finding(MODULE_NOT_LOADED, "the nvidia module is not loaded"))
            return out
        holders = sorted({h for g in node.gpus() for h in gpu_holders(node, g)})
        ctl = procs.device_holders({str(node.dev_root / "nvidiactl"), "/dev/nvidiactl"}, node.proc_root)
        holders += [f"pid {h.pid} ({h.path} open)" for h in ctl]
        if holders:
            out.append(Finding(HELD, f"processes use the driver ({', '.join(holders)})"))
        for g in node.gpus():
            if why := display_attached(node, g):
                out.append(Finding(DISPLAY, f"{g}: {why}"))
        active = self.active_services(node, ctx)
        if not active and (why := self.in_use(node)):
            out.append(Finding(MODULE_IN_USE, why))
        if active and not ctx.stop_services:
            out.append(Finding(SERVICE_ACTIVE, f"{', '.join(active)} active; they hold the driver: allow "
                               "gpusoak to stop and restart them with --stop-services"))
        return out

    def in_use(self, node: Node) -> str | None:
        """nvidia's refcnt counts the modules that use it and every open of its device files; what
        is left beyond nvidia_uvm, nvidia_modeset and nvidia_peermem is a user rmmod would refuse.
        Judged only with no GPU service active (a service's hold is stopped first, when allowed)."""
        text = node.sysfs.read(node.sysfs.root / "module" / "nvidia" / "refcnt")
        if text is None or not text.strip().isdigit():
            return None
        dependents = sum(1 for m in ("nvidia_uvm", "nvidia_modeset", "nvidia_peermem") if m in self.loaded(node))
        extra = int(text) - dependents
        if extra > 0:
            return f"the nvidia module has {extra} user(s) beyond its dependent modules (refcnt {text.strip()})"
        return None

    def steps(self, node: Node, bdf: PciAddress | None, ctx: Context) -> list[Step]:
        services = self.active_services(node, ctx)
        modules = self.loaded(node)
        return ([Step("service", u, "stop") for u in services]
                + [Step("command", f"rmmod {m}") for m in modules]
                + [Step("command", f"modprobe {m}") for m in reversed(modules)]
                + [Step("service", u, "start") for u in services])

    def perform(self, node: Node, bdf: PciAddress | None, ctx: Context) -> None:
        services = self.active_services(node, ctx)
        modules = self.loaded(node)
        stopped: list[str] = []
        unloaded: list[str] = []
        try:
            for unit in services:
                check(run(node, ["systemctl", "stop", unit], ctx, f"stopping {unit}"), f"stopping {unit}")
                stopped.append(unit)
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
            for unit in stopped:
                try:
                    check(run(node, ["systemctl", "start", unit], ctx, f"starting {unit}"), f"starting {unit}")
                except GpusoakError as err:
                    errors.append(str(err))
        if errors:
            raise WriteFailed("; ".join(errors))
