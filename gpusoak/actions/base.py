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
from gpusoak.errors import CannotLook, Hung, WriteFailed
from gpusoak.host import procs, usage
from gpusoak.host.commands import CommandResult
from gpusoak.host.node import Node
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.model import Finding, PciAddress
from gpusoak.verdict import refusals

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
FABRIC_BYPASS = "fabric_bypass"  # a sysfs reset or removal on an NVSwitch node: Fabric Manager is not told
NVSWITCH_CLASS = 0x0680  # "bridge, other": how NVSwitch functions enumerate
SERVICE_ACTIVE = "service_active"
# Fabric Manager or IMEX runs: gpusoak never stops them, and rmmod nvidia fails while they hold the
# driver, so a module reload cannot run on this node at all (structural, unlike a stoppable service).
FABRIC_SERVICE = "fabric_service_running"
NOT_BOUND = "not_bound"
IOMMU = "iommu_group"
# What each refusal means for the verdict (not applicable, or retest): gpusoak/verdict/refusals.py.
MODULE_NOT_LOADED = "module_not_loaded"
DRIVER_SHARED = "driver_shared"  # unloading the module would also unbind functions outside the run
DRIVER_MISMATCH = "driver_mismatch"  # the module on disk is not the one loaded: a reload would upgrade it
CANNOT_RELOAD = "cannot_reload"  # modprobe could not load a module back: unloading it would strand the node
HELD_BY_MODULE = "held_by_module"  # a module outside the reloaded set uses one that would be unloaded
IN_USE = "device_in_use"  # the node keeps a file system, swap, md/dm or a network interface on it
BUS_BUSY = refusals.BUS_BUSY  # the bus lock stayed busy (EAGAIN twice): the bus reset did not run; the cycle is skipped
CANNOT_LOOK = "cannot_look"  # a holder check could not read what it needs: refused, never passed

MISC_MAJOR = 10  # include/uapi/linux/major.h

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
    out += holder_refusals(node, bdf, ctx or Context(), excused)
    display = display_attached(node, bdf)
    if display:
        out.append(Finding(DISPLAY, display))
    return out


def nvswitches(node: Node) -> list[PciAddress]:
    """The node's NVSwitch functions (NVIDIA, class 0x0680): an HGX baseboard."""
    return [b for b in node.sysfs.pci_devices()
            if node.sysfs.function(b).vendor == NVIDIA_VENDOR
            and (node.sysfs.function(b).pci_class or 0) >> 8 == NVSWITCH_CLASS]


def fabric_refusals(node: Node, bdf: PciAddress, what: str) -> list[Finding]:
    """On an NVSwitch node a GPU must rejoin the NVLink fabric after a reset, through Fabric
    Manager; a reset or removal through sysfs bypasses it, and CUDA then fails with
    cudaErrorSystemNotReady until the fabric state is COMPLETED (NVIDIA Fabric Manager user guide;
    nvmlDeviceGetGpuFabricInfoV). nvidia-smi -r (gpu_reset) is the documented reset there."""
    if node.sysfs.function(bdf).vendor != NVIDIA_VENDOR or not (switches := nvswitches(node)):
        return []
    return [Finding(FABRIC_BYPASS, f"{what} bypasses Fabric Manager on this NVSwitch node "
                    f"({len(switches)} NVSwitch functions): use gpu_reset (nvidia-smi -r) or module_reload")]


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


def holder_refusals(node: Node, bdf: PciAddress | None, ctx: Context,
                    excused: frozenset[int] = frozenset()) -> list[Finding]:
    """Who holds what the action takes away, looked at now (and again right before ``perform``).

    A function (``bdf``): bound to nvidia, its /dev/nvidia<minor>, its MIG capability nodes and
    its DRM nodes; bound to vfio-pci, its /dev/vfio/<group> and /dev/vfio/devices/vfioN; any other
    function, what the node keeps on it (file systems, swap, md/dm, network interfaces in use).
    The node (``bdf`` None, module_reload): every NVIDIA device node (major 195: all GPUs,
    nvidiactl, nvidia-modeset), nvidia-uvm, nvidia-caps and /dev/iommu, plus what the node keeps on
    each other function it names. nvidiactl and nvidia-uvm are shared by every CUDA process, so
    they block only the node: one GPU's load child must not block another GPU's reset.
    Anything that could not be read is a ``cannot_look`` refusal, never a pass. ``excused``: the
    processes of the GPU services the run stops before its first cycle (what ``plan`` sees).
    """
    look = _Look(node)
    if (nested := procs.nested_pid_namespace(node.proc_root, node.pid)) is not None:
        look.blind.append(nested)
    if bdf is not None:
        look.function(bdf, ctx)
    else:
        if not ctx.devices or any(node.sysfs.function(d).vendor == NVIDIA_VENDOR for d in ctx.devices):
            look.nvidia_stack()
        for d in ctx.devices:
            if node.sysfs.function(d).vendor != NVIDIA_VENDOR:
                look.function(d, ctx)
    return look.findings(bdf, excused)


class _Look:
    """The device numbers one holder check wants, what it could not read, and the node's uses."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.wanted: dict[tuple[int, int], str] = {}
        self.blind: list[str] = []
        self.uses: list[str] = []
        self.pids: dict[int, str] = {}  # holders NVML names (another PID namespace's /proc may hide them)
        self._majors: dict[str, int] | None = None

    def majors(self) -> dict[str, int]:
        if self._majors is None:
            try:
                self._majors = procs.char_majors(self.node.proc_root)
            except CannotLook as err:
                self.blind.append(str(err))
                self._majors = {}
        return self._majors

    def nvidia_stack(self) -> None:
        self.wanted[(procs.NVIDIA_MAJOR, procs.ANY_MINOR)] = "an NVIDIA device"
        for name in ("nvidia-uvm", "nvidia-caps"):
            if (major := self.majors().get(name)) is not None:
                self.wanted[(major, procs.ANY_MINOR)] = name
        try:
            # iommufd's /dev/iommu is a misc device with a dynamic minor (drivers/iommu/iommufd/main.c).
            if (minor := procs.misc_minor(self.node.proc_root, "iommu")) is not None:
                self.wanted[(MISC_MAJOR, minor)] = "/dev/iommu"
        except CannotLook as err:
            self.blind.append(str(err))
        for gpu in self.node.gpus():  # nvidia-drm's card and render nodes: an open one pins the module [I]
            self.class_nodes(self.node.sysfs.function(gpu).path / "drm", "dri/{}")

    def function(self, bdf: PciAddress, ctx: Context) -> None:
        fn = self.node.sysfs.function(bdf)
        driver = fn.driver
        if driver == "nvidia":
            self.nvidia_gpu(bdf)
        elif driver is not None and (driver.endswith("vfio-pci") or (fn.path / "vfio-dev").is_dir()):
            self.vfio(bdf)
        elif driver is not None and fn.vendor != NVIDIA_VENDOR:
            found = usage.function_uses(self.node.sysfs, self.node.proc_root, self.node.runner, bdf,
                                        ctx.command_timeout_s)
            self.uses += [f"{bdf}: {u}" for u in found.uses]
            self.blind += found.unreadable

    def nvidia_gpu(self, bdf: PciAddress) -> None:
        node = self.node
        if node.nvml is not None:
            for pid in node.nvml.compute_pids(bdf) or []:
                self.pids[pid] = f"pid {pid} (NVML compute process)"
        # The driver's procfs first: reading it attaches nothing, where an NVML query of a GPU
        # nobody holds persistent initialises it and tears it down again (nv_open_device /
        # nv_shutdown_adapter); NVML is the fallback where the procfs file cannot be read.
        minor, why = procs.procfs_minor(node.proc_root, bdf)
        if minor is None and node.nvml is not None:
            minor = node.nvml.device_minor(bdf)
        if minor is None:
            nvml = "NVML could not say" if node.nvml is not None else node.nvml_unavailable or "no NVML"
            self.blind.append(f"no device minor for {bdf}, bound to nvidia: {why}; {nvml}")
            return
        self.wanted[(procs.NVIDIA_MAJOR, minor)] = f"/dev/nvidia{minor}"
        if (caps := self.majors().get("nvidia-caps")) is not None:
            try:
                for m in procs.mig_minors(node.proc_root, minor):
                    self.wanted[(caps, m)] = f"a MIG capability of /dev/nvidia{minor}"
            except CannotLook as err:
                self.blind.append(str(err))
        # nvidia-drm's card and render nodes are children of the PCI function (drm_sysfs.c).
        self.class_nodes(node.sysfs.function(bdf).path / "drm", "dri/{}")

    def vfio(self, bdf: PciAddress) -> None:
        fn = self.node.sysfs.function(bdf)
        group = fn.iommu_group
        if group is not None:
            # The group's device is named "<id>" or "noiommu-<id>" in class vfio (vfio/group.c
            # vfio_create_group); its minor comes from an IDA, not from the group id.
            folder = self.node.sysfs.root / "class" / "vfio"
            for name in (str(group), f"noiommu-{group}"):
                if (folder / name).exists():
                    self.device_number(folder / name / "dev", f"/dev/vfio/{name}")
                    break
            else:
                self.blind.append(f"{bdf} is bound to {fn.driver} but {folder / str(group)} is missing")
        # The per-device cdev, vfio/devices/vfioN (vfio_main.c, CONFIG_VFIO_DEVICE_CDEV, Linux 6.6+).
        self.class_nodes(fn.path / "vfio-dev", "vfio/devices/{}")

    def class_nodes(self, folder: Path, name: str) -> None:
        try:
            entries = sorted(os.listdir(folder))
        except FileNotFoundError:
            return
        except OSError as err:
            self.blind.append(f"cannot list {folder}: {err.strerror or err}")
            return
        for entry in entries:
            if (folder / entry / "dev").exists():
                self.device_number(folder / entry / "dev", "/dev/" + name.format(entry))

    def device_number(self, path: Path, label: str) -> None:
        try:
            major, minor = (int(x) for x in path.read_text().strip().split(":"))
        except (OSError, ValueError) as err:
            self.blind.append(f"cannot read {path}: {getattr(err, 'strerror', None) or err}")
            return
        self.wanted[(major, minor)] = label

    def findings(self, bdf: PciAddress | None, excused: frozenset[int] = frozenset()) -> list[Finding]:
        out = []
        found = dict(self.pids)
        if self.wanted:
            try:
                scan = procs.scan_holders(self.wanted, self.node.proc_root, self.node.stat)
            except CannotLook as err:
                self.blind.append(str(err))
            else:
                for h in scan.holders:
                    found.setdefault(h.pid, f"pid {h.pid} ({_dev_name(self.node, h.path)} open)")
                if scan.unreadable:
                    shown = ", ".join(scan.unreadable[:3]) + (" ..." if len(scan.unreadable) > 3 else "")
                    self.blind.append(f"cannot read the descriptors of {len(scan.unreadable)} process(es) "
                                      f"({shown}): a holder there is not ruled out")
        found = {pid: what for pid, what in found.items() if pid not in excused}
        if found:
            held = ", ".join(found[pid] for pid in sorted(found))
            out.append(Finding(HELD, f"processes hold the GPU ({held}); a held GPU blocks or breaks a reset"
                               if bdf is not None else f"processes use the driver ({held})"))
        if self.uses:
            out.append(Finding(IN_USE, f"the node uses it: {'; '.join(self.uses)}"))
        if self.blind:
            out.append(Finding(CANNOT_LOOK, f"could not look for holders: {'; '.join(self.blind)}"))
        return out


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
