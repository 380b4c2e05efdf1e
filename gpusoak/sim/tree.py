"""Lays out a sysfs tree the way the kernel does, under a temporary root.

    devices/pci0000:17/0000:17:01.0/0000:18:00.0/     the function's real directory
    bus/pci/devices/0000:18:00.0 -> ../../../devices/pci0000:17/0000:17:01.0/0000:18:00.0
    bus/pci/drivers/nvidia/0000:18:00.0 -> the device; <device>/driver -> bus/pci/drivers/nvidia
    kernel/iommu_groups/N/devices/0000:18:00.0 -> the device; <device>/iommu_group -> the group
    module/nvidia/version

File contents follow Linux 6.12 (shared/reference/gpu-reset-reference.md section 3).
"""

from __future__ import annotations

import os
from pathlib import Path

from gpusoak.model import PciAddress
from gpusoak.sim.scenario import Scenario

# aer_dev_* bit names printed by Linux 6.12 (drivers/pci/pcie/aer.c).
AER_COR_NAMES = ("RxErr", "BadTLP", "BadDLLP", "Rollover", "Timeout", "NonFatalErr", "CorrIntErr", "HeaderOF")
AER_UNCOR_NAMES = ("Undefined", "DLP", "SDES", "TLP", "FCP", "CmpltTO", "CmpltAbrt", "UnxCmplt", "RxOF",
                   "MalfTLP", "ECRC", "UnsupReq", "ACSViol", "UncorrIntErr", "BlockedTLP",
                   "AtomicOpBlocked", "TLPBlockedErr", "PoisonTLPBlocked")


def aer_text(names: tuple[str, ...], counts: dict[str, int], total_name: str) -> str:
    lines = [f"{n} {counts.get(n, 0)}" for n in names]
    lines.append(f"{total_name} {sum(counts.values())}")
    return "\n".join(lines) + "\n"


def put(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    os.symlink(os.path.relpath(target, path.parent), path)


class Tree:
    """Paths of the simulated tree, and the few primitives the kernel model edits it with."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.device_dirs: dict[PciAddress, Path] = {}

    def bus_link(self, bdf: PciAddress) -> Path:
        return self.root / "bus" / "pci" / "devices" / str(bdf)

    def driver_dir(self, name: str) -> Path:
        return self.root / "bus" / "pci" / "drivers" / name

    def dev(self, bdf: PciAddress) -> Path:
        return self.device_dirs[bdf]

    def set_attr(self, bdf: PciAddress, name: str, value: str) -> None:
        put(self.dev(bdf) / name, value + "\n", 0o444 if name not in WRITABLE else 0o644)

    def bind(self, bdf: PciAddress, driver: str) -> None:
        link(self.dev(bdf) / "driver", self.driver_dir(driver))
        link(self.driver_dir(driver) / str(bdf), self.dev(bdf))

    def unbind(self, bdf: PciAddress) -> None:
        drv = self.dev(bdf) / "driver"
        if drv.is_symlink():
            name = os.path.basename(os.readlink(drv))
            drv.unlink()
            entry = self.driver_dir(name) / str(bdf)
            if entry.is_symlink():
                entry.unlink()


WRITABLE = {"reset_method", "driver_override", "power/control", "d3cold_allowed", "enable"}


def _driver(tree: Tree, name: str) -> None:
    d = tree.driver_dir(name)
    for control in ("bind", "unbind", "new_id", "remove_id"):
        put(d / control, "", 0o200)


def _function(tree: Tree, bdf: PciAddress, parent: Path, files: dict[str, str]) -> Path:
    d = parent / str(bdf)
    d.mkdir(parents=True, exist_ok=True)
    tree.device_dirs[bdf] = d
    for name, value in files.items():
        put(d / name, value + "\n", 0o644 if name in WRITABLE else 0o444)
    link(tree.bus_link(bdf), d)
    return d


def build(root: Path, scenario: Scenario) -> Tree:
    tree = Tree(root)
    for control in ("rescan", "drivers_probe"):
        put(root / "bus" / "pci" / control, "", 0o200)
    for drv in ("nvidia", "pcieport", "vfio-pci", "snd_hda_intel"):
        _driver(tree, drv)
    put(root / "module" / "nvidia" / "version", scenario.driver + "\n", 0o444)
    put(root / "module" / "nvidia" / "refcnt", "0\n", 0o444)
    for group, gpu in enumerate(scenario.gpus, start=10):
        parent = root / "devices" / f"pci{gpu.bdf.domain:04x}:{(gpu.upstream[0].bus if gpu.upstream else gpu.bdf.bus):02x}"
        for port in gpu.upstream:
            if port in tree.device_dirs:
                parent = tree.device_dirs[port]
                continue
            parent = _function(tree, port, parent, {
                "vendor": "0x8086", "device": "0x352a", "class": "0x060400",
                "current_link_speed": gpu.link_speed, "max_link_speed": gpu.link_speed,
                "current_link_width": str(gpu.link_width), "max_link_width": str(gpu.link_width),
                "power_state": "D0", "power/control": "on", "reset_method": "pm",
                "aer_dev_correctable": aer_text(AER_COR_NAMES, {}, "TOTAL_ERR_COR").rstrip("\n"),
                "aer_dev_nonfatal": aer_text(AER_UNCOR_NAMES, {}, "TOTAL_ERR_NONFATAL").rstrip("\n"),
                "aer_dev_fatal": aer_text(AER_UNCOR_NAMES, {}, "TOTAL_ERR_FATAL").rstrip("\n"),
            })
            tree.bind(port, "pcieport")
        d = _function(tree, gpu.bdf, parent, {
            "vendor": "0x10de", "device": f"0x{gpu.device_id:04x}", "class": "0x030200",
            "subsystem_vendor": "0x10de", "subsystem_device": "0x16c1", "revision": "0xa1",
            "numa_node": str(gpu.numa_node), "enable": "1", "d3cold_allowed": "1",
            "power_state": "D0", "power/control": "on", "power/runtime_status": "active",
            "current_link_speed": gpu.link_speed, "max_link_speed": gpu.link_speed,
            "current_link_width": str(gpu.link_width), "max_link_width": str(gpu.link_width),
            "reset_method": "flr bus", "driver_override": "(null)",
            "aer_dev_correctable": aer_text(AER_COR_NAMES, {}, "TOTAL_ERR_COR").rstrip("\n"),
            "aer_dev_nonfatal": aer_text(AER_UNCOR_NAMES, {}, "TOTAL_ERR_NONFATAL").rstrip("\n"),
            "aer_dev_fatal": aer_text(AER_UNCOR_NAMES, {}, "TOTAL_ERR_FATAL").rstrip("\n"),
        })
        for control in ("reset", "remove", "rescan"):
            put(d / control, "", 0o200)
        tree.bind(gpu.bdf, "nvidia")
        group_dir = root / "kernel" / "iommu_groups" / str(group)
        link(group_dir / "devices" / str(gpu.bdf), d)
        link(d / "iommu_group", group_dir)
    return tree
