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

from gpusoak.errors import GpusoakError, Hung, WriteFailed
from gpusoak.host import procs
from gpusoak.host.commands import CommandResult
from gpusoak.host.node import Node
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

# Units that hold GPUs open or must not see them vanish (reference 4.4); stopped only when allowed.
GPU_SERVICES = ("nvidia-persistenced", "nvidia-fabricmanager", "nvidia-dcgm", "dcgm")


@dataclass(frozen=True)
class Context:
    write_timeout_s: float = 90.0  # FLR alone may legitimately block 65 s before the kernel gives up
    command_timeout_s: float = 180.0
    stop_services: bool = False  # may GPU services be stopped (and restarted afterwards)?
    # The functions this run soaks. A node-scope action acts for them: module_reload reloads the
    # NVIDIA stack for NVIDIA GPUs, or the modules of their drivers for other functions.
    devices: tuple[PciAddress, ...] = ()


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
    # What the action means, versioned: raised when the same name starts doing something else, so
    # that runs of different meanings are not compared (result.json actions_semantics, trends).
    semantics = 1

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


def refusals_common(node: Node, bdf: PciAddress) -> list[Finding]:
    """Refusals every GPU action shares: not root, absent, a process holds the GPU, a display."""
    out = []
    if not node.is_root:
        out.append(Finding(NOT_ROOT, "resets write sysfs control files: run as root"))
    if not node.sysfs.function(bdf).present:
        out.append(Finding(NOT_PRESENT, f"{bdf} is not in {node.sysfs.devices_dir}"))
        return out
    holders = gpu_holders(node, bdf)
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


def gpu_holders(node: Node, bdf: PciAddress) -> list[str]:
    """PIDs holding this GPU, from NVML's process list and /proc/<pid>/fd links to /dev/nvidia<minor>."""
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
    return [found[pid] for pid in sorted(found)]


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
