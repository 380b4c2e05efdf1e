"""The simulated kernel: applies the effect of each sysfs write according to the GPU's profile.

Production code writes through ``Sysfs.write``; here that write lands in ``SimKernel.write``,
which edits the tree, appends /dev/kmsg records in the kernel's own wording, and updates the
state the simulated NVML answers from. Errors are the kernel's: the errno a real write returns.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from gpusoak.clock import VirtualClock
from gpusoak.errors import GpusoakError
from gpusoak.model import PciAddress
from gpusoak.sim import profiles
from gpusoak.sim.scenario import GpuSpec, Scenario
from gpusoak.sim.tree import Tree

KERN_WARNING, KERN_INFO, KERN_ERR = 4, 6, 3
BOOT_OFFSET_S = 12.0  # the node has been up a little while when the soak starts

RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")


@dataclass
class GpuState:
    spec: GpuSpec
    rng: random.Random
    alive: bool = True  # False: config space reads all-ones, NVML says GPU is lost
    reset_method: tuple[str, ...] = ("flr", "bus")
    settle_until: float = 0.0  # link still retraining until this simulated time
    flr_count: int = 0
    health: dict = field(default_factory=dict)  # what the simulated NVML reads (sim.nvml.HEALTH keys)


class SimKernel:
    def __init__(self, root: Path, tree: Tree, scenario: Scenario, clock: VirtualClock, seed: int) -> None:
        self.root = root
        self.tree = tree
        self.scenario = scenario
        self.clock = clock
        self.kmsg_path = root.parent / "kmsg"
        self.kmsg_path.touch()
        self._seq = 0
        self._lock = threading.Lock()
        self.gpus: dict[PciAddress, GpuState] = {
            g.bdf: GpuState(g, random.Random(f"{seed}:{g.bdf}"), health=dict(g.health)) for g in scenario.gpus}
        self.event_sets: list = []  # simulated NVML event sets registered for XIDs
        clock.on_advance(self._tick)
        self.log(KERN_INFO, f"Linux version {scenario.kernel} (gpusoak simulated node)")
        for g in scenario.gpus:
            self.log(KERN_INFO, f"NVRM: GPU at PCI:{g.bdf.slot}: {g.uuid}")

    # -- kernel log --------------------------------------------------------------------------
    def log(self, level: int, message: str, device: PciAddress | None = None) -> None:
        """Append one record in /dev/kmsg format (facility 0, kernel)."""
        usec = int((BOOT_OFFSET_S + self.clock.monotonic()) * 1e6)
        record = f"{level},{self._seq},{usec},-;{message}\n"
        if device is not None:
            record += f" SUBSYSTEM=pci\n DEVICE=+pci:{device}\n"
        self._seq += 1
        with open(self.kmsg_path, "a", encoding="utf-8") as f:
            f.write(record)

    def xid(self, bdf: PciAddress, number: int, text: str, pid: str = "'<unknown>'", name: str = "<unknown>") -> None:
        """The driver reports an XID: the NVRM line in the kernel log, and an NVML event."""
        self.log(KERN_WARNING, f"NVRM: Xid (PCI:{bdf.slot}): {number}, pid={pid}, name={name}, {text}")
        for event_set in self.event_sets:
            event_set.deliver(bdf, number)

    # -- time --------------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        for bdf, st in self.gpus.items():
            if st.alive and st.settle_until and now >= st.settle_until:
                st.settle_until = 0.0
                self.tree.set_attr(bdf, "current_link_speed", st.spec.link_speed)

    # -- the write seam ----------------------------------------------------------------------
    def write(self, path: Path, data: str) -> None:
        with self._lock:
            self._write(Path(path), data)

    def _write(self, path: Path, data: str) -> None:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            raise PermissionError(errno.EACCES, "outside the simulated sysfs", str(path)) from None
        parts = rel.parts
        if parts[:3] == ("bus", "pci", "devices") and len(parts) >= 5:
            bdf = _bdf(parts[3])
            return self._device_write(bdf, "/".join(parts[4:]), data, path)
        if parts[:3] == ("bus", "pci", "drivers") and len(parts) == 5:
            return self._driver_write(parts[3], parts[4], data, path)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def _device_write(self, bdf: PciAddress, attr: str, data: str, path: Path) -> None:
        st = self.gpus.get(bdf)
        if st is None or not self.tree.dev(bdf).exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if attr == "reset":
            return self._reset(bdf, st, data, path)
        if attr == "reset_method":
            return self._reset_method(bdf, st, data, path)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def _reset_method(self, bdf: PciAddress, st: GpuState, data: str, path: Path) -> None:
        value = data.strip()
        if value == "default":
            st.reset_method = ("flr", "bus")
        else:
            wanted = tuple(value.split())
            supported = ("flr", "bus")
            for name in wanted:
                if name not in RESET_METHODS or name not in supported:
                    self.log(KERN_ERR, f"pci {bdf}: Unsupported reset method '{name}'", bdf)
                    raise OSError(errno.EINVAL, "Invalid argument", str(path))
            if not wanted:
                self.log(KERN_INFO, f"pci {bdf}: All device reset methods disabled by user", bdf)
            st.reset_method = wanted
        self.tree.set_attr(bdf, "reset_method", " ".join(st.reset_method))

    def _reset(self, bdf: PciAddress, st: GpuState, data: str, path: Path) -> None:
        # pci-sysfs reset_store: kstrtoul, then "1" calls pci_reset_function(); else -EINVAL.
        if data.strip() != "1":
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        if not st.reset_method:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))
        if st.reset_method[0] != "flr":
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))  # issue 4: bus
        st.flr_count += 1
        outcome = st.spec.profile.flr(st.rng, st.flr_count)
        self.clock.advance(outcome.reset_s)
        if outcome.result == profiles.FLR_NOT_READY:
            ms = round(outcome.reset_s * 1000)
            self.log(KERN_WARNING, f"nvidia {bdf}: not ready {ms}ms after FLR; giving up", bdf)
            self._die(bdf, st)
            # pcie_flr() returns -ENOTTY from pci_dev_wait(); with reset_method "flr" alone no
            # other method is tried, so the write fails with it.
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device", str(path))
        self._revive(bdf, st)
        if outcome.settle_s > 0:
            st.settle_until = self.clock.monotonic() + outcome.settle_s
            self.tree.set_attr(bdf, "current_link_speed", "2.5 GT/s PCIe")

    def _die(self, bdf: PciAddress, st: GpuState) -> None:
        # Config space reads all-ones: LNKSTA 0xffff decodes to speed "Unknown" and width 63 [I];
        # power_state shows the PCI core's cached current_state, still D0.
        st.alive = False
        self.tree.set_attr(bdf, "current_link_speed", "Unknown")
        self.tree.set_attr(bdf, "current_link_width", "63")

    def _revive(self, bdf: PciAddress, st: GpuState) -> None:
        st.alive = True
        self.tree.set_attr(bdf, "current_link_speed", st.spec.link_speed)
        self.tree.set_attr(bdf, "current_link_width", str(st.spec.link_width))
        self.tree.set_attr(bdf, "power_state", "D0")

    def _driver_write(self, driver: str, control: str, data: str, path: Path) -> None:
        if not self.tree.driver_dir(driver).is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        try:
            bdf = _bdf(data.strip())
        except GpusoakError:
            raise OSError(errno.ENODEV, "No such device", str(path)) from None
        dev = self.tree.device_dirs.get(bdf)
        if dev is None:
            raise OSError(errno.ENODEV, "No such device", str(path))
        bound = os.path.basename(os.readlink(dev / "driver")) if (dev / "driver").is_symlink() else None
        if control == "unbind":
            if bound != driver:
                raise OSError(errno.ENODEV, "No such device", str(path))
            self.tree.unbind(bdf)
        elif control == "bind":
            if bound is not None:
                raise OSError(errno.EBUSY, "Device or resource busy", str(path))
            self.tree.bind(bdf, driver)
        else:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))


def _bdf(name: str) -> PciAddress:
    return PciAddress.parse(name)
