"""What the simulated kernel and driver publish as devices come and go: procfs files, device
nodes and their sysfs class entries. Recomputed from the bindings after every change, so an
unbind, a remove or a module unload takes them away as the kernel does.

- ``/proc/driver/nvidia/gpus/<bdf>/information`` for each GPU bound to nvidia: created by
  ``nv_procfs_add_gpu`` in ``nv_pci_probe``, removed by ``nv_procfs_remove_gpu`` in
  ``nv_pci_remove`` (kernel-open/nvidia/nv-procfs.c, nv-pci.c); its text is
  ``nv_procfs_read_gpu_info``'s.
- ``/proc/driver/nvidia-caps/mig-minors`` while nvidia is loaded (nv-caps.c nv_cap_procfs_init,
  nv_procfs_read_mig_minors; minors handed out in table order by _nv_cap_table_init).
- ``/proc/devices`` as the loaded modules register their majors.
- For a function bound to vfio-pci: its group's ``/dev/vfio/<group>`` (class "vfio", minor from an
  IDA: drivers/vfio/group.c vfio_group_alloc, vfio_create_group), gone when the group's last device
  leaves (vfio_device_remove_group); and its cdev ``/dev/vfio/devices/vfioN`` (class "vfio-dev",
  parent the PCI function: drivers/vfio/vfio_main.c, device_cdev.c). Each ``dev`` file reads
  "major:minor" (drivers/base/core.c dev_show).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from gpusoak.model import PciAddress
from gpusoak.sim.procs import (
    VFIO_CDEV_MAJOR,
    VFIO_GROUP_MAJOR,
    DeviceNumber,
    SimProcesses,
    proc_devices,
)
from gpusoak.sim.scenario import Scenario
from gpusoak.sim.tree import Tree, gpu_functions, link, put

MIG_GPUS, MIG_GIS, MIG_CIS = 32, 15, 8  # nv-caps.c g_nv_cap_mig_gpu_table: gpu0..31, gi0..14, ci0..7


def mig_minors_text() -> str:
    # Minor 0 is nvidia-nvlink's fabric-mgmt; then mig/config, mig/monitor; then the GPU table.
    lines = ["config 1", "monitor 2"]
    minor = 3
    for gpu in range(MIG_GPUS):
        for gi in range(MIG_GIS):
            lines.append(f"gpu{gpu}/gi{gi}/access {minor}")
            minor += 1
            for ci in range(MIG_CIS):
                lines.append(f"gpu{gpu}/gi{gi}/ci{ci}/access {minor}")
                minor += 1
    return "\n".join(lines) + "\n"


def information_text(kernel, bdf: PciAddress) -> str:
    st = kernel.gpus[bdf]
    return (f"Model: \t\t {st.spec.model}\nIRQ:   \t\t {160 + kernel.minor(bdf)}\n"
            f"GPU UUID: \t {st.spec.uuid}\nVideo BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\n"
            f"DMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t {bdf}\n"
            f"Device Minor: \t {kernel.minor(bdf)}\nGPU Firmware: \t {kernel.scenario.driver}\n"
            "GPU Excluded:\t No\n")


class Published:
    def __init__(self, sys_root: Path, tree: Tree, scenario: Scenario, procs: SimProcesses) -> None:
        self.sys_root = sys_root
        self.tree = tree
        self.scenario = scenario
        self.procs = procs
        self.proc = procs.proc_root
        self.group_minors: dict[int, int] = {}  # IOMMU group -> its vfio group node's minor
        self.cdevs: dict[PciAddress, int] = {}  # function -> N of its vfio/devices/vfioN
        self._lock = threading.Lock()

    def sync(self, kernel) -> None:
        with self._lock:
            modules = set(kernel.modules)
            (self.proc / "devices").write_text(proc_devices(modules))
            caps = self.proc / "driver" / "nvidia-caps" / "mig-minors"
            if "nvidia" in modules and not caps.exists():
                put(caps, mig_minors_text(), 0o444)
            elif "nvidia" not in modules and caps.exists():
                shutil.rmtree(caps.parent)
            for bdf, st in kernel.gpus.items():
                info = self.proc / "driver" / "nvidia" / "gpus" / str(bdf)
                bound = bdf in self.tree.device_dirs and kernel.driver_of(bdf) == "nvidia"
                if bound and not info.exists():
                    put(info / "information", information_text(kernel, bdf), 0o444)
                elif not bound and info.exists():
                    shutil.rmtree(info)
                self._vfio(kernel, st)

    def _vfio(self, kernel, st) -> None:
        group = self.tree.groups.get(st.spec.bdf)
        on_vfio = []
        for b, _ in gpu_functions(st.spec):
            bound = b in self.tree.device_dirs and kernel.driver_of(b) == "vfio-pci"
            if bound:
                on_vfio.append(b)
                if b not in self.cdevs:
                    n = _lowest_free(self.cdevs.values())
                    self.cdevs[b] = n
                    self._node(self.tree.dev(b) / "vfio-dev" / f"vfio{n}", f"vfio/devices/vfio{n}",
                               DeviceNumber(VFIO_CDEV_MAJOR, n), self.sys_root / "class" / "vfio-dev" / f"vfio{n}")
            elif b in self.cdevs:
                n = self.cdevs.pop(b)
                self._drop(f"vfio/devices/vfio{n}", self.sys_root / "class" / "vfio-dev" / f"vfio{n}",
                           self.tree.device_dirs[b] / "vfio-dev" if b in self.tree.device_dirs else None)
        if group is None:
            return
        virtual = self.sys_root / "devices" / "virtual" / "vfio" / str(group)
        if on_vfio and group not in self.group_minors:
            minor = _lowest_free(self.group_minors.values())
            self.group_minors[group] = minor
            self._node(virtual, f"vfio/{group}", DeviceNumber(VFIO_GROUP_MAJOR, minor),
                       self.sys_root / "class" / "vfio" / str(group))
        elif not on_vfio and group in self.group_minors:
            del self.group_minors[group]
            self._drop(f"vfio/{group}", self.sys_root / "class" / "vfio" / str(group), virtual)

    def _node(self, folder: Path, name: str, number: DeviceNumber, class_link: Path) -> None:
        put(folder / "dev", f"{number.major}:{number.minor}\n", 0o444)
        link(class_link, folder)
        self.procs.add_device(name, *number)

    def _drop(self, name: str, class_link: Path, folder: Path | None) -> None:
        self.procs.remove_device(name)
        if class_link.is_symlink():
            class_link.unlink()
        if folder is not None and folder.exists():
            shutil.rmtree(folder)

    def vfio_numbers(self, bdf: PciAddress) -> list[DeviceNumber]:
        """The vfio nodes through which a user holds this function: its cdev, its group."""
        out = []
        if bdf in self.cdevs:
            out.append(DeviceNumber(VFIO_CDEV_MAJOR, self.cdevs[bdf]))
        group = self.tree.groups.get(PciAddress(bdf.domain, bdf.bus, bdf.device, 0))
        if group in self.group_minors:
            out.append(DeviceNumber(VFIO_GROUP_MAJOR, self.group_minors[group]))
        return out


def _lowest_free(used) -> int:
    taken = set(used)
    return next(n for n in range(len(taken) + 1) if n not in taken)

