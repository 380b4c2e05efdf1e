"""The simulated kernel: applies the effect of each sysfs write according to the GPU's profile.

Production code writes through ``Sysfs.write``; here that write lands in ``SimKernel.write``, which
edits the tree, appends /dev/kmsg records in the kernel's and driver's own wording, and updates the
state the simulated NVML and commands answer from. Errors are the kernel's: the errno a real write
returns. A write the kernel would block forever blocks here too (outside the model's lock, so the
rest of the node goes on, as it does on a real one).
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpusoak.clock import VirtualClock
from gpusoak.errors import GpusoakError
from gpusoak.model import PciAddress
from gpusoak.sim import driver_reset, fabric, profiles
from gpusoak.sim import mig as sim_mig
from gpusoak.sim import services as sim_services
from gpusoak.sim.procs import NVIDIA_MAJOR, DeviceNumber, SimProcesses
from gpusoak.sim.published import Published
from gpusoak.sim.scenario import GpuSpec, Scenario
from gpusoak.sim.tree import (
    AER_COR_NAMES,
    FUNCTIONS,
    IDLE_LINK_SPEED,
    Tree,
    aer_text,
    create_gpu,
    gpu_functions,
    module_holders,
    no_bus_reset,
    put,
    remove_function,
)

KERN_ERR, KERN_WARNING, KERN_INFO = 3, 4, 6
BOOT_OFFSET_S = 12.0  # the node has been up a little while when the soak starts
RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")
_BLOCK_FOREVER_S = 3600.0
NV_MINOR_REGULAR_MAX = 247  # kernel-open/common/inc/nv-chardev-numbers.h NV_MINOR_DEVICE_NUMBER_REGULAR_MAX


@dataclass
class GpuState:
    spec: GpuSpec
    rng: random.Random
    alive: bool = True  # False: config space reads all-ones, NVML says GPU is lost
    stuck: bool = False  # dead until the node reboots (D3cold, fallen off the bus)
    removed: bool = False
    reset_method: tuple[str, ...] = ("flr", "bus")
    settle_until: float = 0.0  # link still retraining until this simulated time
    settle_line: int = 0  # on this line of time (parallel workers each have their own)
    resets: int = 0
    link_width: int = 0  # the width the link trained at
    link_speed: str = ""  # the speed it trained at (what it runs at under load)
    was_on_vfio: bool = False
    loaded: bool = False  # a load ran since the last reset (profiles that fail under load look)
    load_running: bool = False  # a load child is running on it now: the link runs at its trained speed
    corrupt: bool = False  # memory reads back wrong until the next reset
    rm_stale: bool = False  # reset under a bound nvidia, not yet noticed (pre-GSP; sim.driver_reset)
    rm_lost: bool = False  # RM lost the GPU to a reset it was not told of, until a driver reload
    aer_corrected: int = 0
    fabric_since: float = float("-inf")  # when it last left the NVLink fabric (sim.fabric); registered at boot
    generation: int = 0  # bumped when the driver lets go of the GPU: NVML handles from before go stale
    bound_after_reset: int = 0  # st.resets when nvidia was last bound: a late fault is armed once per reset
    rpm_state: str | None = None  # D3hot / D3cold while runtime-suspended (idle, power/control auto)
    health: dict = field(default_factory=dict)  # what the simulated NVML reads (sim.nvml.HEALTH keys)
    settings: dict = field(default_factory=dict)  # what nvidia-smi reads and sets (scenario.SETTINGS_DEFAULTS keys)
    mig: sim_mig.MigState = field(default_factory=sim_mig.MigState)  # MIG mode and instances (sim.mig)


class SimKernel:
    def __init__(self, root: Path, tree: Tree, scenario: Scenario, clock: VirtualClock, seed: int,
                 processes: SimProcesses | None = None) -> None:
        self.root = root
        self.tree = tree
        self.scenario = scenario
        self.clock = clock
        self.kmsg_path = root.parent / "kmsg"
        self.kmsg_path.touch()
        self.dev_root = root.parent / "dev"
        self.procs = processes or SimProcesses(root.parent / "proc", self.dev_root)
        self._seq = 0
        self._lock = threading.RLock()  # RLock: a close inside a write re-checks waiting removes
        self._log_lock = threading.Lock()
        self.gpus: dict[PciAddress, GpuState] = {
            g.bdf: GpuState(g, random.Random(f"{seed}:{g.bdf}"), link_width=g.trained_width, link_speed=g.trained_speed, health=dict(g.health),
                            reset_method=("flr",) if no_bus_reset(g.device_id) else ("flr", "bus"),
                            settings=dict(g.settings), mig=sim_mig.MigState.from_spec(g.mig, f"{seed}:{g.uuid}"))
            for g in scenario.gpus}
        self.overrides: dict[PciAddress, str] = {}
        self.bus_lock_busy: dict[PciAddress, int | None] = {}  # bridge -> busy answers left (None: always)
        # GPU -> its /dev/nvidia<minor> while bound to nvidia. At boot nvidia probed the GPUs in the
        # scenario's order, or gave each the `minor` its [[gpu]] names (the node's history before
        # the run: a GPU moved to vfio-pci since left a gap, say).
        self.minors: dict[PciAddress, int] = {}
        self._last_minor: dict[PciAddress, int] = {}
        if "nvidia" in scenario.modules:
            fixed = {g.bdf: g.minor for g in scenario.gpus if g.minor is not None and not g.vfio}
            self.minors.update(fixed)
            self._last_minor.update(fixed)
            for g in scenario.gpus:
                if g.bdf not in self.minors and not g.vfio:
                    self._assign_minor(g.bdf)
        # (GPU, NVML device function) -> the pynvml error it raises there ("NoPermission",
        # "Unknown", "LibraryMismatch", ...): the scenario's [gpu] nvml_errors, or fail_nvml().
        self.nvml_errors: dict[tuple[PciAddress, str], str] = {
            (g.bdf, fn): err for g in scenario.gpus for fn, err in g.nvml_errors.items()}
        self.modules: set[str] = set(scenario.modules)
        self.services: dict[str, str] = dict(scenario.services)  # unit -> active / inactive
        self.service_pids: dict[str, int] = {}  # the process of each active unit that holds devices
        self.event_sets: list = []  # simulated NVML event sets registered for XIDs
        self.blocked: list[threading.Event] = []  # writes blocked "forever"; tests may release them
        self.timers: list[tuple[float, int, Callable[[], None]]] = []  # (when, line of time, what happens)
        self._waiting: dict[threading.Event, tuple] = {}  # removes waiting for a device file to close
        self.procs.on_close(self._closed)
        for g in scenario.gpus:
            self._boot_power(g)
        self.published = Published(root, tree, scenario, self.procs)
        clock.on_advance(self._tick)
        self.update_refcnt()
        self.published.sync(self)
        # "Linux version <release> ..." opens a real boot log; the rest of that line is the
        # simulator's [I]. "NVRM: GPU at PCI:dddd:bb:dd: GPU-<uuid>": reference 1.1 (printed once
        # per GPU before its first Xid; printing it at boot is the simulator's [I]).
        self.log(KERN_INFO, f"Linux version {scenario.kernel} (gpusoak simulated node)")
        for g in scenario.gpus:
            self.log(KERN_INFO, f"NVRM: GPU at PCI:{g.bdf.slot}: {g.uuid}")
        sim_services.boot(self)  # persistenced and DCGM hold every GPU from boot on
        with self._lock:
            self.runtime_pm()  # an idle GPU with power/control auto is suspended when the run starts

    def fail_nvml(self, bdf: PciAddress, function: str, error: str | None) -> None:
        """Make one NVML device function fail on one GPU (None: answer again)."""
        if error is None:
            self.nvml_errors.pop((bdf, function), None)
        else:
            self.nvml_errors[(bdf, function)] = error

    def fail_mig_create(self, bdf: PciAddress, fails: bool = True) -> None:
        """Make the driver refuse every new MIG GPU instance on one GPU (False: create again)."""
        self.gpus[bdf].mig.create_fails = fails
    def hold_bus_lock(self, bridge: PciAddress, times: int | None = 1) -> None:
        """Another reset or rescan holds the bus lock below ``bridge``: its next ``times`` bridge
        resets answer EAGAIN (None: every one; 0: free again)."""
        if times == 0:
            self.bus_lock_busy.pop(bridge, None)
        else:
            self.bus_lock_busy[bridge] = times

    # -- kernel log --------------------------------------------------------------------------
    def log(self, level: int, message: str, device: PciAddress | None = None, facility: int = 0) -> None:
        """Append one record in /dev/kmsg format (facility 0, kernel, unless a user wrote it).

        Documentation/ABI/testing/dev-kmsg: "prio,seq,usec,flags;text\\n", the prefix carrying
        facility and priority, flags '-' by default, then continuation lines starting with ' '
        carrying key/value context (" SUBSYSTEM=", " DEVICE=+subsystem:devname")."""
        usec = int((BOOT_OFFSET_S + self.clock.monotonic()) * 1e6)
        with self._log_lock:  # parallel GPU workers log to one ring buffer
            record = f"{(facility << 3) | level},{self._seq},{usec},-;{message}\n"
            if device is not None:
                record += f" SUBSYSTEM=pci\n DEVICE=+pci:{device}\n"
            self._seq += 1
            with open(self.kmsg_path, "a", encoding="utf-8") as f:
                f.write(record)

    def devkmsg_open(self) -> DevKmsgWriter:
        """open("/dev/kmsg", O_WRONLY): refused with printk_devkmsg=off (devkmsg_open: -EPERM);
        each open has its own rate limit (ratelimit_default_init on the file's devkmsg_user)."""
        if self.scenario.devkmsg == "off":
            raise PermissionError(errno.EPERM, "Operation not permitted", "/dev/kmsg")
        return DevKmsgWriter(self)

    def xid(self, bdf: PciAddress, number: int, text: str, pid: str = "'<unknown>'", name: str = "<unknown>") -> None:
        """The driver reports an XID: the NVRM line in the kernel log, and an NVML event.

        Line format: reference 1.1 (kernel_rc.c krcReportXid, the <=565.77 form with pid and name
        always present, "'<unknown>'"/"<unknown>" when there is no channel)."""
        self.log(KERN_WARNING, f"NVRM: Xid (PCI:{bdf.slot}): {number}, pid={pid}, name={name}, {text}")
        for event_set in self.event_sets:
            event_set.deliver(bdf, number)

    def update_refcnt(self) -> None:
        """/sys/module/*/refcnt as the kernel keeps it: one reference per module that uses it
        (ref_module takes one for each module_use, kernel/module/main.c), plus, for nvidia, a
        hidden user where a GPU's profile keeps the module busy."""
        busy = any(st.spec.profile.module_busy() for st in self.gpus.values())
        for name in self.modules:
            count = len(module_holders(self.tree, name)) + int(name == "nvidia" and busy)
            put(self.root / "module" / name / "refcnt", f"{count}\n", 0o444)

    # -- lookups -----------------------------------------------------------------------------
    def gpu_of(self, bdf: PciAddress) -> GpuState | None:
        """The GPU a function belongs to (its graphics function or one of its siblings)."""
        return self.gpus.get(PciAddress(bdf.domain, bdf.bus, bdf.device, 0))

    def driver_of(self, bdf: PciAddress) -> str | None:
        link = self.tree.device_dirs.get(bdf)
        if link is None:
            return None
        # One readlink, no is_symlink() before it: a parallel worker may unbind between the two.
        try:
            return os.path.basename(os.readlink(link / "driver"))
        except OSError:
            return None

    def default_driver(self, bdf: PciAddress) -> str | None:
        st = self.gpu_of(bdf)
        if st is None:
            return None
        return dict(gpu_functions(st.spec)).get(bdf)

    # -- time --------------------------------------------------------------------------------
    def after(self, seconds: float, what: Callable[[], None]) -> None:
        """Something the kernel or driver does of its own accord ``seconds`` from now."""
        with self._lock:
            self.timers.append((self.clock.monotonic() + seconds, self.clock.timeline_id(), what))

    def _tick(self, now: float) -> None:
        line = self.clock.timeline_id()
        due = [t for t in self.timers if now >= t[0] and line in (t[1], self.clock.main_id())]
        if due:
            with self._lock:
                self.timers = [t for t in self.timers if t not in due]
                for _, _, what in due:
                    what()
        for bdf, st in self.gpus.items():
            # A timer fires on the line of time it was set on, or on the main line once the
            # parallel workers are merged into it: another GPU's worker may be ahead in time.
            line = self.clock.timeline_id()
            if st.alive and not st.removed and st.settle_until and now >= st.settle_until \
                    and line in (st.settle_line, self.clock.main_id()):
                st.settle_until = 0.0
                self.tree.set_attr(bdf, "current_link_speed", self._speed_now(st))

    # -- the read seam -----------------------------------------------------------------------
    def read(self, path: Path) -> str:
        """A sysfs read as the kernel answers it. For a GPU that fell off the bus or is stuck in
        D3cold, the link attributes fail with EINVAL: current_link_speed_show and
        current_link_width_show (drivers/pci/pci-sysfs.c) return -EINVAL when the capability read
        fails, which it does once the PCI core has marked the device disconnected
        (pci_dev_is_disconnected in the config accessors) [I: when the core marks it]. A function
        that merely did not come back reads all-ones (Unknown, x63) instead (see _die)."""
        if path.name in ("current_link_speed", "current_link_width"):
            try:
                st = self.gpus.get(PciAddress.parse(path.parent.name))
            except GpusoakError:
                st = None
            if st is not None and st.stuck and not st.alive:
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            if st is not None and st.rpm_state == "D3cold" and path.parent.name == str(st.spec.bdf):
                # A runtime-suspended D3cold device is not marked disconnected: its config reads
                # complete with all-ones, which current_link_*_show decode as Unknown and x63 [I].
                return "Unknown\n" if path.name == "current_link_speed" else "63\n"
        return path.read_text()

    # -- the write seam ----------------------------------------------------------------------
    def write(self, path: Path, data: str) -> None:
        with self._lock:
            try:
                block = self._write(Path(path), data)
            finally:
                self.runtime_pm()
                self.published.sync(self)
        if block is not None:
            # The kernel would not return: block outside the lock, as one device's lock would.
            self.blocked.append(block)
            block.wait(_BLOCK_FOREVER_S)
            if getattr(block, "completed", False):
                return  # what it waited for went away (the last holder closed the device)
            raise OSError(errno.EINTR, "Interrupted system call", str(path))

    def _write(self, path: Path, data: str) -> threading.Event | None:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            raise PermissionError(errno.EACCES, "outside the simulated sysfs", str(path)) from None
        parts = rel.parts
        if parts[:3] == ("bus", "pci", "devices") and len(parts) >= 5:
            return self._device_write(_bdf(parts[3], path), "/".join(parts[4:]), data, path)
        if parts[:3] == ("bus", "pci", "drivers") and len(parts) == 5:
            return self._driver_write(parts[3], parts[4], data, path)
        if parts == ("bus", "pci", "drivers_probe"):
            return self._probe(_bdf(data.strip(), path, errno.ENODEV), path)
        if parts == ("bus", "pci", "rescan"):
            # rescan_store (the bus type's attribute): every bus, so every removed device comes back, whoever removed it.
            return self._rescan(data, path, below=None)
        # [I] a write to any file this model does not handle is answered EACCES; the errno a real
        # node gives for each such file (read-only attribute, root with CAP_DAC_OVERRIDE) is not
        # checked [U].
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def _device_write(self, bdf: PciAddress, attr: str, data: str, path: Path) -> threading.Event | None:
        if bdf not in self.tree.device_dirs:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if attr == "reset_subordinate":
            return self._reset_subordinate(bdf, data, path)
        if attr == "rescan":
            # dev_rescan_store: pci_rescan_bus(pdev->bus), the bus this device sits on and below.
            return self._rescan(data, path, below=(bdf.domain, bdf.bus))
        if attr.startswith("pci_bus/"):
            return self._bus_write(bdf, attr, data, path)
        st = self.gpu_of(bdf)
        if st is None:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if attr == "reset":
            return self._reset(bdf, st, data, path)
        if attr == "reset_method":
            return self._reset_method(bdf, st, data, path)
        if attr == "driver_override":
            # drivers/pci/pci-sysfs.c driver_override_store/_show: a name sets it, an empty write
            # (or a lone newline) clears it; the show prints the NULL pointer with "%s", which the
            # kernel's vsnprintf renders "(null)". Nothing is bound or unbound (reference 3).
            value = data.strip()
            if value:
                self.overrides[bdf] = value
            else:
                self.overrides.pop(bdf, None)
            self.tree.set_attr(bdf, "driver_override", value or "(null)")
            return None
        if attr == "remove":
            return self._remove(bdf, st, data, path)
        if attr == "power/control":
            # drivers/base/power/sysfs.c control_store: "auto" or "on", anything else -EINVAL.
            # "on" is pm_runtime_forbid, which resumes the device synchronously before it returns
            # (drivers/base/power/runtime.c pm_runtime_forbid -> rpm_resume); "auto" is
            # pm_runtime_allow, after which an idle device may suspend (runtime_pm below).
            if data.strip() not in ("auto", "on"):
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            self.tree.set_attr(bdf, "power/control", data.strip())
            return None
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    # -- resets ------------------------------------------------------------------------------
    def _reset_method(self, bdf: PciAddress, st: GpuState, data: str, path: Path) -> None:
        # drivers/pci/pci.c reset_method_store: "" -> pci_warn "All device reset methods disabled
        # by user"; "default" -> pci_init_reset_methods; else each space-separated name: unknown
        # -> pci_err "Invalid reset method '%s'", unsupported (its reset_fn PCI_RESET_PROBE fails)
        # -> pci_err "Unsupported reset method '%s'", both -EINVAL, previous methods kept.
        # Differences [I]: an unknown name is logged here as "Unsupported" too, and the empty
        # case is logged at KERN_INFO where the kernel uses pci_warn.
        value = data.strip()
        supported = ("flr", "bus") if bdf == st.spec.bdf and not no_bus_reset(st.spec.device_id) else ("flr",)
        if value == "default":
            wanted = supported
        else:
            wanted = tuple(value.split())
            for name in wanted:
                if name not in RESET_METHODS or name not in supported:
                    self.log(KERN_ERR, f"pci {bdf}: Unsupported reset method '{name}'", bdf)
                    raise OSError(errno.EINVAL, "Invalid argument", str(path))
            if not wanted:
                self.log(KERN_INFO, f"pci {bdf}: All device reset methods disabled by user", bdf)
        if bdf == st.spec.bdf:
            st.reset_method = wanted
        self.tree.set_attr(bdf, "reset_method", " ".join(wanted))

    def _reset(self, bdf: PciAddress, st: GpuState, data: str, path: Path) -> None:
        # pci-sysfs reset_store: kstrtoul, then "1" calls pci_reset_function(); else -EINVAL.
        if data.strip() != "1":
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        if bdf != st.spec.bdf:
            return None  # an audio or USB function's own FLR: nothing the soak looks at
        method = st.reset_method[0] if st.reset_method else None
        if method == "bus":
            # pci_parent_bus_reset() refuses when any other function shares the bus.
            if len(gpu_functions(st.spec)) > 1 or self._others_behind(st):
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))
        elif method != "flr":
            # drivers/pci/pci.c __pci_reset_function_locked: no enabled method left (the list was
            # emptied by the user) -> -ENOTTY. Only flr and bus are modelled, so any other is
            # answered the same way [I].
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))
        # pci_reset_function resets under whatever driver is bound; nvidia is not told (driver_reset).
        if not self.apply_reset(st, "flr" if method == "flr" else "bus", unaware=self.driver_of(bdf) == "nvidia"):
            # pcie_flr()/the bus reset return -ENOTTY from pci_dev_wait(); with one method enabled
            # no other is tried, so the write fails with it.
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))
        return None

    def _others_behind(self, st: GpuState) -> list[PciAddress]:
        mine = {b for b, _ in gpu_functions(st.spec)}
        parent = self.tree.gpu_parents[st.spec.bdf]
        return [b for b, d in self.tree.device_dirs.items() if d.parent == parent and b not in mine]

    def _reset_subordinate(self, bridge: PciAddress, data: str, path: Path) -> None:
        # drivers/pci/pci-sysfs.c reset_subordinate_store: kstrtoul (-EINVAL if not a number),
        # a non-zero value calls __pci_reset_bus(pdev->subordinate) and returns its error;
        # __pci_reset_bus is -ENOTTY when a device does not come back (reference 6). The
        # simulator accepts only "1" (0 or 2 are -EINVAL here, a no-op / a reset on a real node) [I].
        if data.strip() != "1":
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        below = [st for st in self.gpus.values() if self.tree.gpu_parents[st.spec.bdf] == self.tree.dev(bridge)]
        if any(no_bus_reset(st.spec.device_id) for st in below):
            # __pci_reset_bus -> pci_bus_resettable: a device flagged NO_BUS_RESET below the bridge
            # makes the bus unresettable, -ENOTTY before anything is reset.
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))
        if bridge in self.bus_lock_busy:
            # __pci_reset_bus: after the probe (pci_bus_reset(bus, PCI_RESET_PROBE)), pci_bus_trylock
            # fails while another reset or a rescan holds a device lock on the bus: -EAGAIN, nothing reset.
            left = self.bus_lock_busy[bridge]
            if left is not None:
                if left <= 1:
                    del self.bus_lock_busy[bridge]
                else:
                    self.bus_lock_busy[bridge] = left - 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable", str(path))
        ok = True
        for st in below:
            # pci_bus_save_and_disable / pci_bus_restore: each driver below is told only through
            # err_handler hooks, which nvidia has none of (driver_reset).
            ok = self.apply_reset(st, "bus", unaware=self.driver_of(st.spec.bdf) == "nvidia") and ok
        if not ok:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))

    def wipe_settings(self, st: GpuState) -> None:
        """The GPU's driver state starts over: compute mode, power limit, application clocks and
        accounting back to their defaults, legacy persistence mode off [I: the driver
        re-initialises the GPU's RM state when it probes the GPU and after a reset; nothing in
        the open modules carries these across, and nvidia-smi sets them for the running driver]."""
        st.settings = dict(st.spec.settings)
        st.health["persistence_mode"] = False
        st.mig.lost(reset=False, arch=st.spec.arch)  # MIG instances do not survive a fresh probe (sim.mig)

    def apply_reset(self, st: GpuState, kind: str, unaware: bool = False) -> bool:
        """One reset of a GPU by its profile; True when the GPU answered afterwards. ``unaware``:
        the reset came from the PCI core while ``nvidia`` was bound (sim.driver_reset)."""
        bdf = st.spec.bdf
        if st.removed:
            return False
        st.resets += 1
        self.wipe_settings(st)
        st.mig.lost(reset=True, arch=st.spec.arch)  # a reset destroys the instances, applies a pending mode (sim.mig)
        outcome = st.spec.profile.reset(st.rng, kind, st.resets, st.loaded)
        st.loaded = False
        st.corrupt = st.spec.profile.corrupts(st.rng)
        self.clock.advance(outcome.reset_s)
        if st.stuck:
            self.log(KERN_WARNING, f"nvidia {bdf}: not ready {round(profiles.NOT_READY_S * 1000)}ms after "
                     f"{'FLR' if kind != 'bus' else 'bus reset'}; giving up", bdf)
            return False
        if outcome.result == profiles.NOT_READY:
            what = "bus reset" if kind == "bus" else "FLR"
            self.log(KERN_WARNING, f"nvidia {bdf}: not ready {round(outcome.reset_s * 1000)}ms after {what}; giving up", bdf)
            self._die(st)
            return False
        if outcome.result == profiles.D3COLD:
            # drivers/pci/pci.c pci_power_up: pci_err "Unable to change power state from %s to D0,
            # device inaccessible" (pci_power_name of current_state); reference 3.1. Staying so
            # until a reboot is the profile's (DESIGN.md) [I].
            self.log(KERN_ERR, f"nvidia {bdf}: Unable to change power state from D3cold to D0, device inaccessible", bdf)
            self._die(st, stuck=True, power="D3cold")
            return False
        if outcome.result == profiles.FELL_OFF:
            # src/nvidia/arch/nvalloc/unix/src/osinit.c osHandleGpuLost: nvErrorLog_va(Xid 79,
            # "GPU has fallen off the bus.") then NV_DEV_PRINTF "GPU has fallen off the bus.";
            # reference 1.1, 5. "This doesn't support PEX Reset and Recovery yet": until a reboot.
            self.xid(bdf, 79, "GPU has fallen off the bus.")
            self.log(KERN_ERR, f"NVRM: GPU {bdf}: GPU has fallen off the bus.")
            self._die(st, stuck=True)
            return False
        if kind == "bus" or outcome.link_width is not None or outcome.link_speed is not None:
            st.link_width = outcome.link_width or st.spec.trained_width
            st.link_speed = outcome.link_speed or st.spec.trained_speed
        self._revive(st)
        fabric.restart(self, st)  # the reset took it out of the NVLink fabric (sim.fabric)
        if unaware:
            driver_reset.unaware_reset(self, st)
        if outcome.aer_corrected:
            self._aer_storm(st, outcome.aer_corrected)
        if outcome.settle_s > 0:
            st.settle_until = self.clock.monotonic() + outcome.settle_s
            st.settle_line = self.clock.timeline_id()
            # [I] the link trains up from 2.5 GT/s (Gen1) after a reset; reading the low speed for
            # up to 0.8 s is the simulator's choice, not a measured or documented figure.
            self.tree.set_attr(bdf, "current_link_speed", "2.5 GT/s PCIe")
        return True

    def _die(self, st: GpuState, stuck: bool = False, power: str | None = None) -> None:
        # Config space reads all-ones: LNKSTA 0xffff decodes to speed "Unknown" and width 63 [I];
        # power_state shows the PCI core's cached current_state (D0) unless the core saw D3cold.
        st.alive = False
        st.stuck = st.stuck or stuck
        st.rpm_state = None
        bdf = st.spec.bdf
        self.tree.set_attr(bdf, "current_link_speed", "Unknown")
        self.tree.set_attr(bdf, "current_link_width", "63")
        if power:
            self.tree.set_attr(bdf, "power_state", power)

    def _revive(self, st: GpuState) -> None:
        st.alive = True
        st.rpm_state = None
        bdf = st.spec.bdf
        self.tree.set_attr(bdf, "current_link_speed", self._speed_now(st))
        self.tree.set_attr(bdf, "current_link_width", str(st.link_width))
        self.tree.set_attr(bdf, "power_state", "D0")

    # -- the link at idle and under load -----------------------------------------------------
    def _speed_now(self, st: GpuState) -> str:
        """The current link speed of a live, trained link. NVIDIA: the current PCIe generation
        "may be lower than the max" when the GPU is not in use (NVML API reference,
        nvmlDeviceGetCurrPcieLinkGeneration,
        https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html; reference 2.2 and 6);
        the width stays. Idle at IDLE_LINK_SPEED (Gen1) [U: the exact idle generation, and that the
        change is immediate], the trained speed (the lesser of the GPU's and its port's, see
        scenario.GpuSpec.trained_speed) while a load runs on it, also inside the retraining window
        after a reset: the kernel waits for the link to train (Data Link Layer Link Active) before
        a reset returns (drivers/pci/pci.c pci_bridge_wait_for_secondary_bus, pcie_wait_for_link_delay),
        so a GPU in use runs at speed; what the window shows is the Gen1 reading at idle."""
        return (st.link_speed or st.spec.trained_speed) if st.load_running else IDLE_LINK_SPEED

    def load_begin(self, bdf: PciAddress) -> None:
        """A load child started on the GPU: the link rises to its trained speed."""
        self._set_load(bdf, True)

    def load_end(self, bdf: PciAddress) -> None:
        """The load child exited: the GPU idles and the link drops to the idle generation."""
        self._set_load(bdf, False)

    def _set_load(self, bdf: PciAddress, running: bool) -> None:
        with self._lock:
            st = self.gpus.get(bdf)
            if st is None:
                return
            st.load_running = running
            if st.alive and not st.removed and bdf in self.tree.device_dirs:
                self.tree.set_attr(bdf, "current_link_speed", self._speed_now(st))

    def _aer_storm(self, st: GpuState, count: int) -> None:
        bdf = st.spec.bdf
        port = st.spec.upstream[-1] if st.spec.upstream else bdf
        st.aer_corrected += count
        self.tree.set_attr(bdf, "aer_dev_correctable",
                           aer_text(AER_COR_NAMES, {"RxErr": st.aer_corrected}, "TOTAL_ERR_COR").rstrip("\n"))
        # drivers/pci/pcie/aer.c aer_print_port_info: pci_info "%s%s error message received from
        # %04x:%02x:%02x.%d" (6.12 wording; older "error received:"), then aer_print_error's
        # "PCIe Bus Error: severity=%s, type=%s, (%s)" (reference 3.1). The levels here are
        # KERN_WARNING (the kernel: info, and err/warn by severity) [I]; the cap of 5 messages is
        # the simulator's stand-in for the kernel's ratelimits (added after 6.12) [I].
        for _ in range(min(count, 5)):  # the kernel rate-limits the messages; the counter keeps counting
            self.log(KERN_WARNING, f"pcieport {port}: AER: Correctable error message received from {bdf}", port)
            self.log(KERN_WARNING, f"nvidia {bdf}: PCIe Bus Error: severity=Correctable, type=Physical Layer, "
                     "(Receiver ID)", bdf)

    # -- drivers -----------------------------------------------------------------------------
    def _driver_write(self, driver: str, control: str, data: str, path: Path) -> threading.Event | None:
        # drivers/base/bus.c unbind_store: -ENODEV unless the device is bound to this driver;
        # bind_store: -ENODEV unless the device exists and driver_match_device (pci_bus_match,
        # which honours driver_override) matches, else device_driver_attach (drivers/base/dd.c:
        # __driver_probe_device -EBUSY when already bound). An unknown driver has no directory:
        # ENOENT from the path lookup.
        if not self.tree.driver_dir(driver).is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        bdf = _bdf(data.strip(), path, errno.ENODEV)
        if bdf not in self.tree.device_dirs:
            raise OSError(errno.ENODEV, "No such device", str(path))
        bound = self.driver_of(bdf)
        if control == "unbind":
            if bound != driver:
                raise OSError(errno.ENODEV, "No such device", str(path))
            return self._unbind(bdf)
        if control == "bind":
            if bound is not None:
                raise OSError(errno.EBUSY, "Device or resource busy", str(path))
            override = self.overrides.get(bdf)
            if override is not None and override != driver:
                raise OSError(errno.ENODEV, "No such device", str(path))
            self._bind(bdf, driver, path)
            return None
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def _unbind(self, bdf: PciAddress, then=None) -> threading.Event | None:
        st = self.gpu_of(bdf)
        if st is not None and bdf == st.spec.bdf and self.driver_of(bdf) == "nvidia":
            if st.spec.profile.unbind_blocks():
                # nv_pci_remove polls every 500 ms until the device's usage count drops; it never does.
                self.log(KERN_WARNING, f"NVRM: Attempting to remove device {bdf} with non-zero usage count!")
                return threading.Event()
            if self.device_users(bdf):
                # kernel-open/nvidia/nv-pci.c nv_pci_remove_helper: with the device file open
                # (usage_count != 0) it logs this and waits, 500 ms at a time, until the count is
                # zero; the unbind (or remove) write does not return before that.
                self.log(KERN_WARNING, f"NVRM: Attempting to remove device {bdf} with non-zero usage count!")
                waiting = threading.Event()
                self._waiting[waiting] = (bdf, then or (lambda: self._unbind(bdf)))
                return waiting
        if self.driver_of(bdf) == "vfio-pci" and self.vfio_users(bdf):
            # vfio_unregister_group_dev waits (10 s at a time, asking the user through the driver's
            # request callback) until the device's users let go (drivers/vfio/vfio_main.c). Here a
            # holder of the group node also blocks: stricter than the kernel, which waits only for
            # device fds, but a VM holding the group holds its devices too.
            return threading.Event()
        if st is not None and bdf == st.spec.bdf and self.driver_of(bdf) == "nvidia":
            st.generation += 1
            driver_reset.unbound(st)
            self._free_minor(bdf)
            if st.spec.rtd3:
                self.tree.set_attr(bdf, "power/control", "on")  # the README's udev rule on unbind
                self._resume(st, bdf)
        if self.driver_of(bdf) == "vfio-pci":
            # vfio_pci_core_unregister_device: pm_runtime_get_noresume, pm_runtime_forbid: "on" again.
            self.tree.set_attr(bdf, "power/control", "on")
            self._resume(st, bdf)
        self.tree.unbind(bdf)
        return None

    def vfio_users(self, bdf: PciAddress) -> list[int]:
        return sorted({pid for n in self.published.vfio_numbers(bdf) for pid in self.procs.holders(n)})

    def _bind(self, bdf: PciAddress, driver: str, path: Path) -> None:
        st = self.gpu_of(bdf)
        if driver == "nvidia":
            if "nvidia" not in self.modules or st is None or bdf != st.spec.bdf:
                raise OSError(errno.ENODEV, "No such device", str(path))
            # Wording: reference 5 (RmInitAdapter / rm_init_adapter lines). The driver core line is
            # drivers/base/dd.c call_driver_probe's old pr_warn "%s: probe of %s failed with error
            # %d"; newer kernels print dev_err "probe with driver %s failed with error %d" instead
            # (which release changed it [U]). nv_pci_probe returns -1 (kernel-open/nvidia/nv-pci.c),
            # and device_driver_attach returns the probe's errno to bind_store, so a real bind
            # fails with -1 (EPERM); ENODEV here is the simulator's [I].
            self._assign_minor(bdf)  # nv_pci_probe assigns the minor before RM initialises the GPU
            if not st.alive or st.rm_lost or st.spec.profile.probe_fails(st.was_on_vfio):
                self.log(KERN_ERR, f"NVRM: GPU {bdf}: RmInitAdapter failed! (0x26:0x56:1482)")
                self.log(KERN_ERR, f"NVRM: GPU {bdf}: rm_init_adapter failed, device minor number "
                         f"{self.minor(bdf)}")
                self.log(KERN_WARNING, f"nvidia: probe of {bdf} failed with error -1")
                self._free_minor(bdf)  # the failed probe's unwinding gives the minor back
                raise OSError(errno.ENODEV, "No such device", str(path))
            self.wipe_settings(st)
            self.rm_initialised(st)
            if st.spec.rtd3:
                # NVIDIA README, "PCI-Express Runtime D3 (RTD3) Power Management", System Settings
                # (download.nvidia.com/XFree86/Linux-x86_64/525.89.02/README/dynamicpowermanagement.html):
                # a udev rule on "bind" of an NVIDIA VGA/3D controller to nvidia sets power/control
                # to auto, and one on "unbind" sets it to on.
                self.tree.set_attr(bdf, "power/control", "auto")
            fabric.restart(self, st)  # RmInitAdapter: the GPU registers with the fabric again
        elif driver == "vfio-pci":
            if st is not None:
                st.was_on_vfio = True
            # drivers/vfio/pci/vfio_pci_core.c vfio_pci_core_register_device: pm_runtime_allow (so
            # power/control reads auto) and, unless disable_idle_d3, pm_runtime_put: it idles in D3hot.
            self.tree.set_attr(bdf, "power/control", "auto")
        elif driver not in FUNCTIONS_DRIVERS:
            raise OSError(errno.ENODEV, "No such device", str(path))
        self.tree.bind(bdf, driver)

    def rm_initialised(self, st: GpuState) -> None:
        """RM has initialised the GPU again after a reset: on a bind (RmInitAdapter in nv_pci_probe),
        or after nvidia-smi -r, which resets through the driver and re-initialises it in place. A
        profile's late fault is armed once per reset, from here."""
        if st.resets > st.bound_after_reset:
            st.bound_after_reset = st.resets
            if (delay := st.spec.profile.late_event_s(st.rng)) is not None:
                self.after(delay, lambda: self._late_fault(st))

    def _late_fault(self, st: GpuState) -> None:
        """A profile's fault the driver reports seconds after the bind (LateGspTimeout)."""
        if st.alive and not st.removed and self.driver_of(st.spec.bdf) == "nvidia" and not st.rm_lost:
            driver_reset.lose(self, st, driver_reset.GSP_LOST_XID,
                              f"Timeout after 6s of waiting for RPC response from GPU{self.minor(st.spec.bdf)} GSP! "
                              "Expected function 76 (GSP_RM_CONTROL) sequence 0 (0x0 0x0).")

    def _probe(self, bdf: PciAddress, path: Path) -> None:
        """drivers_probe: bind the driver_override's driver if set, else the default one.

        drivers/base/bus.c drivers_probe_store -> bus_rescan_devices_helper -> device_attach,
        which binds the first matching driver (pci_bus_match honours driver_override); a probe
        that fails leaves the device unbound and the write still succeeds."""
        if bdf not in self.tree.device_dirs or self.driver_of(bdf) is not None:
            return None
        driver = self.overrides.get(bdf) or self.default_driver(bdf)
        if driver is None or driver == "none":
            return None
        try:
            self._bind(bdf, driver, path)
        except OSError:
            pass  # a failed probe leaves the device unbound; the write itself succeeds
        return None

    def nvml_index(self, bdf: PciAddress) -> int:
        """The GPU's place, by PCI bus id, among the GPUs bound to nvidia: NVML's and nvidia-smi's
        index here (sim.nvml nvmlDeviceGetIndex has the source and its [U])."""
        return sorted(b for b in self.gpus if self.driver_of(b) == "nvidia").index(bdf)

    def minor(self, bdf: PciAddress) -> int:
        """The GPU's /dev/nvidia<minor>: the one nvidia assigned at its probe; for a GPU not bound
        now, the one it last had (what a stale holder of its device file would still hold)."""
        st = self.gpu_of(bdf)
        return self.minors[bdf] if bdf in self.minors else self._last_minor.get(
            bdf, st.spec.minor if st is not None and st.spec.minor is not None else 0)

    def _assign_minor(self, bdf: PciAddress) -> None:
        # kernel-open/nvidia/nv.c nv_linux_assign_minor_locked (called from nv-pci.c nv_pci_probe):
        # find_first_zero_bit over nv_linux_minor_bitmap, the lowest free minor. A GPU that comes
        # back after a remove/rescan or a reload gets whatever is lowest then, not its old one.
        taken = set(self.minors.values())
        self.minors[bdf] = next(m for m in range(NV_MINOR_REGULAR_MAX + 1) if m not in taken)
        self._last_minor[bdf] = self.minors[bdf]

    def _free_minor(self, bdf: PciAddress) -> None:
        # nv.c nv_linux_remove_minor_locked (from nv_pci_remove): clear_bit on the bitmap.
        self.minors.pop(bdf, None)

    # -- runtime PM ---------------------------------------------------------------------------
    def _boot_power(self, g: GpuSpec) -> None:
        """The GPU as the node booted: its power/control, and vfio-pci bound where the scenario says."""
        self.tree.set_attr(g.bdf, "power/control", g.power_control)
        if not g.vfio:
            return
        for b, _ in gpu_functions(g):
            self.tree.unbind(b)
            self.overrides[b] = "vfio-pci"
            self.tree.set_attr(b, "driver_override", "vfio-pci")
            self.tree.bind(b, "vfio-pci")
        self.gpus[g.bdf].was_on_vfio = True
        self.tree.set_attr(g.bdf, "power/control", "auto")  # vfio_pci_core_register_device: pm_runtime_allow

    def _idle_state(self, bdf: PciAddress, st: GpuState) -> str | None:
        """Where an idle GPU's graphics function goes under runtime PM, or None (it stays in D0).

        Only with power/control "auto" (drivers/base/power/sysfs.c control_store: pm_runtime_allow)
        and nobody using it: under vfio-pci no open device or group (vfio_pci_core_register_device
        calls pm_runtime_put; an open resumes it), D3hot (PCI PM: vfio-pci does not remove power);
        under nvidia with runtime D3 on (`rtd3`: NVreg_DynamicPowerManagement and a platform that
        can cut the power, nv-pci.c nv_init_dynamic_power_management checks the port's ACPI _PR3),
        no open /dev/nvidiaN, D3cold. The autosuspend delay is not modelled: it suspends at once [I]."""
        driver = self.driver_of(bdf)
        if driver != "vfio-pci" and not (driver == "nvidia" and st.spec.rtd3):
            return None  # nothing to suspend it: no need to read its power/control
        control = (self.tree.dev(bdf) / "power" / "control").read_text().strip()
        if control != "auto":
            return None
        if driver == "vfio-pci" and not self.vfio_users(bdf):
            return "D3hot"
        if driver == "nvidia" and st.spec.rtd3 and not self.device_users(bdf):
            return "D3cold"
        return None  # [I] an unbound function or another driver: no runtime suspend modelled

    def runtime_pm(self) -> None:
        """Settle each GPU's runtime PM after a write or a close: an idle one suspends, one that is
        no longer idle (or has power/control "on") resumes to D0. power/runtime_status says which
        (drivers/base/power/sysfs.c runtime_status_show)."""
        for bdf, st in self.gpus.items():
            if st.removed or not st.alive or bdf not in self.tree.device_dirs:
                continue
            idle = self._idle_state(bdf, st)
            if idle is not None and st.rpm_state is None:
                st.rpm_state = idle
                self.tree.set_attr(bdf, "power_state", idle)
                self.tree.set_attr(bdf, "power/runtime_status", "suspended")
            elif idle is None and st.rpm_state is not None:
                self._resume(st, bdf)

    def _resume(self, st: GpuState | None, bdf: PciAddress) -> None:
        if st is None or bdf != st.spec.bdf or st.rpm_state is None:
            return
        st.rpm_state = None
        self.tree.set_attr(bdf, "power_state", "D0")
        self.tree.set_attr(bdf, "power/runtime_status", "active")

    # -- remove / rescan ---------------------------------------------------------------------
    def _remove(self, bdf: PciAddress, st: GpuState, data: str, path: Path) -> threading.Event | None:
        # drivers/pci/pci-sysfs.c remove_store: kstrtoul, "0" does nothing, non-zero calls
        # pci_stop_and_remove_bus_device_locked. An empty write is -EINVAL there (kstrtoul);
        # treating it as "0" is the simulator's leniency [I].
        if data.strip() in ("", "0"):
            return None
        if self.driver_of(bdf) == "nvidia" and (st.spec.profile.unbind_blocks() or self.device_users(bdf)):
            # remove runs the driver's remove (nv_pci_remove) first: the same wait as an unbind.
            return self._unbind(bdf, then=lambda: self._remove(bdf, st, data, path))
        if self.driver_of(bdf) == "nvidia":
            st.generation += 1
            self._free_minor(bdf)  # remove runs nv_pci_remove
        remove_function(self.tree, bdf)
        if bdf == st.spec.bdf:
            driver_reset.unbound(st)  # removal runs nv_pci_remove as an unbind does
            st.removed = True
        return None

    def _bus_write(self, bridge: PciAddress, attr: str, data: str, path: Path) -> None:
        """A write under a bridge's pci_bus/DDDD:BB/ (the bus class device, drivers/pci/pci-sysfs.c):
        only ``rescan`` is writable; bus_rescan_store rescans that bus and the buses below it."""
        parts = attr.split("/")
        bus = self._bus_number(parts[1] if len(parts) == 3 else "")
        if bus is None or self.tree.buses.get(bus) != self.tree.dev(bridge) / "pci_bus" / parts[1]:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if parts[2] != "rescan":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return self._rescan(data, path, below=bus)

    @staticmethod
    def _bus_number(name: str) -> tuple[int, int] | None:
        domain, _, number = name.partition(":")
        try:
            return int(domain, 16), int(number, 16)
        except ValueError:
            return None

    def _buses_above(self, st: GpuState) -> set[tuple[int, int]]:
        """The buses a rescan of which reaches this GPU: the one it sits on and every one above it."""
        return {(p.domain, p.bus) for p in st.spec.upstream} | {(st.spec.bdf.domain, st.spec.bdf.bus)}

    def _rescan(self, data: str, path: Path, below: tuple[int, int] | None) -> None:
        """pci_rescan_bus (drivers/pci/probe.c): "Scan a PCI bus and child buses for new devices,
        add them, and enable them". ``below`` is the bus scanned; None scans every bus."""
        # kstrtoul, then a non-zero value rescans.
        try:
            value = int(data.strip(), 0)
        except ValueError:
            raise OSError(errno.EINVAL, "Invalid argument", str(path)) from None
        if not value:
            return None
        # [I] what comes back: pci_rescan_bus scans for devices not yet known and adds them; a new
        # pci_dev gets its reset methods from pci_init_reset_methods (drivers/pci/pci.c) and is
        # then probed (pci_bus_add_devices). A device whose config space reads all-ones (fallen
        # off, D3cold) is not found by the scan. Full width and "flr bus" are the scenario's.
        for st in self.gpus.values():
            if below is not None and below not in self._buses_above(st):
                continue
            missing = [b for b, _ in gpu_functions(st.spec) if b not in self.tree.device_dirs]
            if not missing:
                continue
            if st.stuck:
                continue  # a device that fell off the bus does not answer the scan
            for b in [b for b, _ in gpu_functions(st.spec) if b not in missing]:
                remove_function(self.tree, b)  # a partial removal: the scan re-creates the whole slot
            create_gpu(self.tree, st.spec, self.tree.groups[st.spec.bdf], bind=False)
            st.removed = False
            st.link_width, st.link_speed = st.spec.trained_width, st.spec.trained_speed
            self._revive(st)
            st.reset_method = ("flr",) if no_bus_reset(st.spec.device_id) else ("flr", "bus")
            for b, _ in gpu_functions(st.spec):
                self._probe(b, path)
        return None

    # -- modules (driven by the simulated modprobe/rmmod) --------------------------------------
    def unbind_all(self, driver: str) -> None:
        # rmmod nvidia: kernel-open/nvidia/nv.c nvidia_exit_module -> nv_drivers_exit ->
        # nv-pci.c nv_pci_unregister_driver -> pci_unregister_driver, which detaches (removes)
        # every device bound to it.
        for bdf in list(self.tree.device_dirs):
            if self.driver_of(bdf) == driver:
                if driver == "nvidia" and (st := self.gpus.get(bdf)) is not None:
                    st.generation += 1
                    self._free_minor(bdf)
                    if st.spec.rtd3:
                        self.tree.set_attr(bdf, "power/control", "on")  # the README's udev rule on unbind
                        self._resume(st, bdf)
                self.tree.unbind(bdf)
        if driver == "nvidia":
            for st in self.gpus.values():
                driver_reset.module_unloaded(st)

    def device_users(self, bdf: PciAddress) -> list[int]:
        """PIDs with the GPU's /dev/nvidiaN open: the driver's usage count for it."""
        return self.procs.holders(DeviceNumber(NVIDIA_MAJOR, self.minor(bdf)))

    def _closed(self) -> None:
        """A descriptor closed somewhere: finish every remove that was waiting for it, and let an
        idle device suspend."""
        with self._lock:
            self.runtime_pm()
            for waiting, (bdf, finish) in list(self._waiting.items()):
                if self.device_users(bdf):
                    continue
                del self._waiting[waiting]
                finish()
                waiting.completed = True
                waiting.set()

    def probe_all(self, fresh: bool = False) -> None:
        """What loading the nvidia module does: probe every GPU function with no driver.

        kernel-open/nvidia/nv.c nvidia_init_module -> nv_drivers_init -> nv-pci.c
        nv_pci_register_driver -> pci_register_driver, which probes every matching unbound device."""
        for st in self.gpus.values():
            if fresh:
                st.was_on_vfio = False
            for bdf, _ in gpu_functions(st.spec):
                self._probe(bdf, self.root / "bus" / "pci" / "drivers_probe")


class DevKmsgWriter:
    """One open of /dev/kmsg for writing; ``write`` is kernel/printk/printk.c devkmsg_write."""

    RECORD_MAX = 1024  # PRINTKRB_RECORD_MAX (kernel/printk/internal.h)
    DEFAULT_LEVEL = 4  # default_message_loglevel: CONFIG_MESSAGE_LOGLEVEL_DEFAULT's default
    RATELIMIT_INTERVAL_S, RATELIMIT_BURST = 5.0, 10  # DEFAULT_RATELIMIT_INTERVAL (5 * HZ), _BURST

    def __init__(self, kernel: SimKernel) -> None:
        self._kernel = kernel
        self._begin: float | None = None
        self._printed = 0

    def write(self, data: bytes) -> int:
        k = self._kernel
        written = len(data)
        if written > self.RECORD_MAX:
            raise OSError(errno.EINVAL, "Invalid argument", "/dev/kmsg")
        if k.scenario.devkmsg != "on" and not self._ratelimit_ok():
            return written  # dropped, and the write still reports success
        level, facility = self.DEFAULT_LEVEL, 1  # LOG_USER unless the prefix names a facility
        end = data.find(b">")
        if data[:1] == b"<" and end > 1 and data[1:end].isdigit():
            value = int(data[1:end])
            level = value & 7
            facility = (value >> 3) or facility  # facility 0 (kernel) cannot be claimed from userspace
            data = data[end + 1:]
        data = data.removesuffix(b"\n")  # vprintk_store drops the trailing newline
        # msg_add_ext_text escapes, byte by byte, what /dev/kmsg readers must not see raw.
        text = "".join(f"\\x{b:02x}" if b < 32 or b >= 127 or b == 0x5C else chr(b) for b in data)
        k.log(level, text, facility=facility)
        return written

    def _ratelimit_ok(self) -> bool:
        # lib/ratelimit.c ___ratelimit: at most BURST messages per INTERVAL, the rest dropped.
        now = self._kernel.clock.monotonic()
        if self._begin is None or now >= self._begin + self.RATELIMIT_INTERVAL_S:
            self._begin, self._printed = now, 0
        if self._printed < self.RATELIMIT_BURST:
            self._printed += 1
            return True
        return False

    def close(self) -> None:
        pass

    def __enter__(self) -> DevKmsgWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


FUNCTIONS_DRIVERS = {v[3] for v in FUNCTIONS.values()} | {"pcieport"}


def _bdf(name: str, path: Path, code: int = errno.ENOENT) -> PciAddress:
    try:
        return PciAddress.parse(name)
    except GpusoakError:
        raise OSError(code, "No such device", str(path)) from None
