"""What every action shares: scope, context, the steps it would take, and the common refusals.

An action states its preconditions as refusals (each with a reason), lists the exact sysfs writes,
commands and services it would touch (``steps``, what ``gpusoak plan`` prints), and performs them
through the node's seams with a deadline on every one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from gpusoak.actions import services
from gpusoak.errors import GpusoakError, Hung, WriteFailed
from gpusoak.host import procs
from gpusoak.host.commands import CommandResult
from gpusoak.host.node import Node
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.model import Finding, PciAddress

# Refusal reasons (Finding.reason of a refused cycle).
NOT_ROOT = "not_root"
HELD = "held_by_process"
UNSUPPORTED = "method_unsupported"
NOT_PRESENT = "not_present"
NOT_AUTHORISED = "not_authorised"
DISPLAY = "display_attached"
SHARED_DOMAIN = "shared_reset_domain"
MODULE_IN_USE = "module_in_use"
FABRIC_MANAGER = "fabric_manager_needed"
SERVICE_ACTIVE = "service_active"
NOT_BOUND = "not_bound"
IOMMU = "iommu_group"
MODULE_NOT_LOADED = "module_not_loaded"
DRIVER_SHARED = "driver_shared"  # unloading the module would also unbind functions outside the run

NVIDIA_MAJOR = 195  # kernel-open/common/inc/nv-chardev-numbers.h: minors 0..247 are the GPUs

# Units that hold GPUs open (reference 4.4), stopped for a destructive run; never the fabric's
# nvidia-fabricmanager and nvidia-imex (gpusoak/actions/services.py).
GPU_SERVICES = services.STOPPABLE


@dataclass(frozen=True)
class Context:
    write_timeout_s: float = 90.0  # FLR alone may legitimately block 65 s before the kernel gives up
    command_timeout_s: float = 180.0
    # Does the run stop the GPU services (gpusoak/actions/services.py) before its first cycle? A
    # destructive run does unless --keep-services; then an active one is a refusal that names it.
    stop_services: bool = False
    # The functions this run soaks. A node-scope action acts for them: module_reload reloads the
    # NVIDIA stack for NVIDIA GPUs, or the modules of their drivers for other functions.
    devices: tuple[PciAddress, ...] = ()
    # Has the run stopped them? Until then (plan, the choice of supported actions) their holds are
    # excused, as they will be gone; from then on every holder counts, and an active one refuses.
    services_stopped: bool = False


class Step(NamedTuple):
    kind: str  # write, command, service
    target: str  # a sysfs path, an argv, a unit
    value: str = ""  # what is written; for a service: stop/start

    def __str__(self) -> str:
        if self.kind == "write":
            return f"write {self.value!r} > {self.target}"
        if self.kind == "service":
            return f"systemctl {self.value} {self.target}"
        return f"run {self.target}"


class Action:
    name = ""
    scope = "gpu"  # or "node"

    def refusals(self, node: Node, bdf: PciAddress | None, ctx: Context) -> list[Finding]:
        raise NotImplementedError

    def steps(self, node: Node, bdf: PciAddress | None, ctx: Context) -> list[Step]:
        raise NotImplementedError

    def perform(self, node: Node, bdf: PciAddress | None, ctx: Context) -> None:
        raise NotImplementedError


# -- helpers shared by the actions ----------------------------------------------------------------
def slot_functions(node: Node, bdf: PciAddress) -> list[PciAddress]:
    """The GPU's functions, graphics first: audio and USB functions move with it."""
    return [bdf] + node.sysfs.function(bdf).sibling_functions()


def write(node: Node, path: Path, data: str, ctx: Context, what: str) -> None:
    node.sysfs.write(path, data, timeout_s=ctx.write_timeout_s, what=what)


def run(node: Node, argv: list[str], ctx: Context, what: str) -> CommandResult:
    result = node.runner.run(argv, timeout_s=ctx.command_timeout_s)
    if result.timed_out:
        raise Hung(f"{what}: {' '.join(argv)} did not finish within {ctx.command_timeout_s:g} s")
    return result


def check(result: CommandResult, what: str, meanings: dict[int, str] | None = None,
          reason: str | None = None) -> None:
    if result.ok:
        return
    meaning = (meanings or {}).get(result.returncode or 0, "")
    text = (result.stderr or result.stdout).strip().splitlines()
    detail = f"{what}: {' '.join(result.argv)} exited {result.returncode}"
    detail += f" ({meaning})" if meaning else ""
    detail += f": {text[0]}" if text else ""
    raise WriteFailed(detail, exit=result.returncode, reason=reason)


def refusals_common(node: Node, bdf: PciAddress, ctx: Context | None = None) -> list[Finding]:
    """Refusals every GPU action shares: not root, absent, a GPU service that stays active, a
    process holds the GPU, a display. Without ``ctx`` the services are not looked at."""
    out = []
    if not node.is_root:
        out.append(Finding(NOT_ROOT, "resets write sysfs control files: run as root"))
    if not node.sysfs.function(bdf).present:
        out.append(Finding(NOT_PRESENT, f"{bdf} is not in {node.sysfs.devices_dir}"))
        return out
    excused: frozenset[int] = frozenset()
    if ctx is not None and node.sysfs.function(bdf).vendor == NVIDIA_VENDOR:
        out += service_refusals(node, ctx)
        excused = services.excused_pids(node, ctx.stop_services and not ctx.services_stopped, ctx.command_timeout_s)
    holders = gpu_holders(node, bdf, excused)
    if holders:
        out.append(Finding(HELD, f"processes hold the GPU ({', '.join(holders)}); a held GPU blocks or breaks a reset"))
    display = display_attached(node, bdf)
    if display:
        out.append(Finding(DISPLAY, display))
    return out


def display_attached(node: Node, bdf: PciAddress) -> str | None:
    """Why a console or display is on this GPU, if one is: the boot VGA device, or a connected
    DRM connector of a card whose device is this function."""
    fn = node.sysfs.function(bdf)
    if node.sysfs.read(fn.path / "boot_vga") == "1":
        return "this GPU is the boot VGA device: the console is on it"
    drm = node.sysfs.root / "class" / "drm"
    try:
        cards = os.listdir(drm)
    except OSError:
        return None
    for card in cards:
        if "-" not in card:
            continue
        device = drm / card.split("-")[0] / "device"
        try:
            if os.path.basename(os.path.realpath(device)) != str(bdf):
                continue
        except OSError:
            continue
        if node.sysfs.read(drm / card / "status") == "connected":
            return f"display connector {card} is connected"
    return None


def service_refusals(node: Node, ctx: Context) -> list[Finding]:
    """An active GPU service refuses a GPU action when the run keeps it (--keep-services), or when
    it is active although the run has stopped the services (the stop failed, or it was started
    again); while the stop is still to come it is no refusal (its holds are excused)."""
    running = services.active(node, services.STOPPABLE, ctx.command_timeout_s)
    if not running:
        return []
    if not ctx.stop_services:
        return [Finding(SERVICE_ACTIVE, f"{', '.join(running)} active; they hold the GPUs, and --keep-services keeps "
                        "them running (without it a destructive run stops them before its first cycle and "
                        "starts them again at the end)")]
    if ctx.services_stopped:
        return [Finding(SERVICE_ACTIVE, f"{', '.join(running)} active although this run stopped the GPU services "
                        "before its first cycle (the stop failed, or something started them again)")]
    return []


def gpu_holders(node: Node, bdf: PciAddress, excused: frozenset[int] = frozenset()) -> list[str]:
    """PIDs holding this GPU, from NVML's process list and /proc/<pid>/fd links to /dev/nvidia<minor>;
    ``excused``: processes of the GPU services the run stops before its first cycle."""
    found: dict[int, str] = {}
    minor = None
    if node.nvml is not None:
        try:
            h = node.nvml.handle(bdf)
            minor = node.nvml.call("nvmlDeviceGetMinorNumber", h)
            for p in node.nvml.call("nvmlDeviceGetComputeRunningProcesses", h) or []:
                found[int(p.pid)] = f"pid {p.pid} (NVML compute process)"
        except (GpusoakError, node.nvml.lib.NVMLError):
            pass  # a lost or unbound GPU has no processes NVML can list; /proc still tells
    if isinstance(minor, int):
        for h in procs.rdev_holders([(NVIDIA_MAJOR, minor)], node.proc_root, node.stat):
            found.setdefault(h.pid, f"pid {h.pid} ({_dev_name(node, h.path)} open)")
    return [found[pid] for pid in sorted(found) if pid not in excused]


def _dev_name(node: Node, path: str) -> str:
    """A device node as the operator knows it: the simulated /dev reads as /dev."""
    try:
        return "/dev/" + str(Path(path).relative_to(node.dev_root))
    except ValueError:
        return path


def driver_path(node: Node, driver: str, control: str) -> Path:
    if "/" in driver or driver in ("", ".", ".."):
        raise WriteFailed(f"refusing a driver name that is not a plain name: {driver!r}")
    return node.sysfs.root / "bus" / "pci" / "drivers" / driver / control


def driver_module(node: Node, bdf: PciAddress) -> tuple[str | None, str | None]:
    """(driver, module) of a function, from sysfs: the module is the driver's ``module`` link, and
    None where the driver is built into the kernel (or the function has no driver)."""
    driver = node.sysfs.function(bdf).driver
    if driver is None:
        return None, None
    link = driver_path(node, driver, "module")
    try:
        return driver, link.resolve(strict=True).name if link.is_symlink() else None
    except OSError:
        return driver, None


def service_active(node: Node, unit: str, ctx: Context) -> bool:
    r = node.runner.run(["systemctl", "is-active", unit], timeout_s=ctx.command_timeout_s)
    return r.ok and r.stdout.strip() == "active"
