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
from gpusoak.sim.modules import NVIDIA_STACK, USES, dependencies
from gpusoak.sim.scenario import GpuSpec, Scenario

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
        self.gpu_parents: dict[PciAddress, Path] = {}  # each GPU's upstream port directory (for rescans)
        self.groups: dict[PciAddress, int] = {}  # each GPU's IOMMU group
        self.buses: dict[tuple[int, int], Path] = {}  # (domain, bus) -> its pci_bus class directory

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


# Extra functions a GPU may carry, as lspci shows them on NVIDIA boards: (function, device id, class, driver).
# [U] the device ids (audio 0x22BA, USB 0x1AD8, NVSwitch 0x22a3 below) are not checked against
# pci.ids or a real board; the classes are the PCI class codes for HD audio and xHCI.
FUNCTIONS = {"audio": (1, 0x22BA, "0x040300", "snd_hda_intel"), "usb": (2, 0x1AD8, "0x0c0330", "xhci_hcd")}
DRIVERS = ("nvidia", "pcieport", "vfio-pci", "snd_hda_intel", "xhci_hcd")


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
    for control in ("remove", "rescan"):
        put(d / control, "", 0o200)
    link(tree.bus_link(bdf), d)
    return d


def _aer_files() -> dict[str, str]:
    return {"aer_dev_correctable": aer_text(AER_COR_NAMES, {}, "TOTAL_ERR_COR").rstrip("\n"),
            "aer_dev_nonfatal": aer_text(AER_UNCOR_NAMES, {}, "TOTAL_ERR_NONFATAL").rstrip("\n"),
            "aer_dev_fatal": aer_text(AER_UNCOR_NAMES, {}, "TOTAL_ERR_FATAL").rstrip("\n")}


def gpu_functions(gpu: GpuSpec) -> list[tuple[PciAddress, str]]:
    """The GPU's functions and the driver each binds to by default, graphics first."""
    out = [(gpu.bdf, "nvidia")]
    for kind in gpu.functions:
        number, _, _, driver = FUNCTIONS[kind]
        out.append((PciAddress(gpu.bdf.domain, gpu.bdf.bus, gpu.bdf.device, number), driver))
    return out


# An idle NVIDIA GPU's current link generation: NVML's current PCIe generation "may be lower than
# the max" when the GPU is not in use (nvmlDeviceGetCurrPcieLinkGeneration,
# https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html) [U: that it is Gen1].
IDLE_LINK_SPEED = "2.5 GT/s PCIe"


def no_bus_reset(device_id: int) -> bool:
    """drivers/pci/quirks.c quirk_nvidia_no_bus_reset: NVIDIA device ids with (id & 0xffc0) == 0x2340
    get PCI_DEV_FLAGS_NO_BUS_RESET (reference 6; H100 0x2330/0x2331 and H200 0x2335 are outside)."""
    return (device_id & 0xFFC0) == 0x2340


def create_gpu(tree: Tree, gpu: GpuSpec, group: int, bind: bool = True) -> None:
    """The GPU's functions under its upstream port, as the PCI core creates them on a scan."""
    parent = tree.gpu_parents[gpu.bdf]
    d = _function(tree, gpu.bdf, parent, {
        "vendor": "0x10de", "device": f"0x{gpu.device_id:04x}", "class": "0x030200",
        "subsystem_vendor": "0x10de", "subsystem_device": "0x16c1", "revision": "0xa1",
        "numa_node": str(gpu.numa_node), "enable": "1", "d3cold_allowed": "1",
        "power_state": "D0", "power/control": "on", "power/runtime_status": "active",
        # Idle: the link runs below its trained speed until a load runs (SimKernel._speed_now);
        # the maxima are the GPU's own (LNKCAP), the current width what the link trained at.
        "current_link_speed": IDLE_LINK_SPEED, "max_link_speed": gpu.link_speed,
        "current_link_width": str(gpu.trained_width), "max_link_width": str(gpu.link_width),
        # [I] reset_method as drivers/pci/pci.c pci_init_reset_methods would probe it for a
        # function that has FLR and sits alone below its bridge: "flr bus" for the GPU, "flr" for
        # a companion, "pm" for the port (their probes are not modelled; a GPU with companions
        # would not list "bus" on a real node, see pci_parent_bus_reset).
        # A NO_BUS_RESET device lists no "bus": pci_reset_bus_function's probe answers -ENOTTY
        # for it (pci_parent_bus_reset checks dev_flags), so pci_init_reset_methods leaves it out.
        "reset_method": "flr" if no_bus_reset(gpu.device_id) else "flr bus", "driver_override": "(null)", "boot_vga": "1" if gpu.display else "0",
        **_aer_files(),
    })
    put(d / "reset", "", 0o200)
    for kind in gpu.functions:
        number, device_id, klass, _ = FUNCTIONS[kind]
        fd = _function(tree, PciAddress(gpu.bdf.domain, gpu.bdf.bus, gpu.bdf.device, number), parent, {
            "vendor": "0x10de", "device": f"0x{device_id:04x}", "class": klass, "power_state": "D0",
            "power/control": "on", "reset_method": "flr", "driver_override": "(null)", **_aer_files()})
        put(fd / "reset", "", 0o200)
    group_dir = tree.root / "kernel" / "iommu_groups" / str(group)
    for bdf, driver in gpu_functions(gpu):
        link(group_dir / "devices" / str(bdf), tree.dev(bdf))
        link(tree.dev(bdf) / "iommu_group", group_dir)
        if bind:
            tree.bind(bdf, driver)


def remove_function(tree: Tree, bdf: PciAddress) -> None:
    """What pci_stop_and_remove_bus_device leaves: no directory, no links."""
    import shutil

    tree.unbind(bdf)
    d = tree.device_dirs.pop(bdf)
    for entry in (tree.bus_link(bdf), *tree.root.glob(f"kernel/iommu_groups/*/devices/{bdf}")):
        if entry.is_symlink():
            entry.unlink()
    shutil.rmtree(d, ignore_errors=True)


def _bus(tree: Tree, parent: Path, domain: int, number: int) -> None:
    """The pci_bus class device of a bus, a child of the bridge above it (or of the host bridge
    for a root bus): drivers/pci/probe.c pci_alloc_child_bus names it "%04x:%02x" and sets its
    parent to the bridge; pci-sysfs.c gives it a write-only ``rescan`` (bus_rescan_store)."""
    d = parent / "pci_bus" / f"{domain:04x}:{number:02x}"
    put(d / "rescan", "", 0o200)
    tree.buses.setdefault((domain, number), d)


def build(root: Path, scenario: Scenario) -> Tree:
    tree = Tree(root)
    for control in ("rescan", "drivers_probe"):
        put(root / "bus" / "pci" / control, "", 0o200)
    for drv in DRIVERS:
        _driver(tree, drv)
    for module in load_order(scenario.modules):
        load_module(tree, module, scenario.driver if module in NVIDIA_STACK else None,
                    tuple(u for u in USES.get(module, ()) if u in scenario.modules))
    for group, gpu in enumerate(scenario.gpus, start=10):
        parent = root / "devices" / f"pci{gpu.bdf.domain:04x}:{(gpu.upstream[0].bus if gpu.upstream else gpu.bdf.bus):02x}"
        _bus(tree, parent, gpu.bdf.domain, gpu.upstream[0].bus if gpu.upstream else gpu.bdf.bus)
        below = [*gpu.upstream[1:], gpu.bdf][:len(gpu.upstream)]  # what sits on each port's secondary bus
        for port, first in zip(gpu.upstream, below, strict=True):
            if port in tree.device_dirs:
                parent = tree.device_dirs[port]
                # A scenario may put two GPUs on different buses behind one port (a bridge has
                # one secondary bus; the bundled VM-host nodes model a shared reset domain so):
                # each GPU's bus gets its class device, so each can be rescanned alone.
                _bus(tree, parent, first.domain, first.bus)
                continue
            parent = _function(tree, port, parent, {
                "vendor": "0x8086", "device": "0x352a", "class": "0x060400",
                # The port's own capability (a BIOS-capped generation, an x8-wired slot) [I: its
                # current values stay at the trained link's; the idle drop is not modelled here].
                "current_link_speed": gpu.trained_speed, "max_link_speed": gpu.port_speed,
                "current_link_width": str(gpu.trained_width), "max_link_width": str(gpu.port_width),
                "power_state": "D0", "power/control": "on", "reset_method": "pm", **_aer_files(),
            })
            put(parent / "reset_subordinate", "", 0o200)
            _bus(tree, parent, first.domain, first.bus)
            tree.bind(port, "pcieport")
        tree.gpu_parents[gpu.bdf] = parent
        tree.groups[gpu.bdf] = group
        create_gpu(tree, gpu, group, bind="nvidia" in scenario.modules)
    for n in range(scenario.nvswitches):
        sw = PciAddress(0, 0x05 + n, 0, 0)
        _function(tree, sw, root / "devices" / "pci0000:00", {"vendor": "0x10de", "device": "0x22a3",
                                                              "class": "0x068000"})
    return tree


def load_order(modules: tuple[str, ...]) -> list[str]:
    """The scenario's modules, each after the ones it uses (as modprobe loaded them at boot)."""
    out: list[str] = []
    for m in modules:
        for d in [*dependencies(m), m]:
            if d in modules and d not in out:
                out.append(d)
    return out


def load_module(tree: Tree, name: str, version: str | None, uses: tuple[str, ...] = ()) -> None:
    """/sys/module/NAME as mod_sysfs_setup leaves it (kernel/module/sysfs.c): its ``holders``
    folder, its attributes, and a link NAME in the ``holders`` folder of each module it uses
    (add_usage_links, one per module_use the symbol resolution made). ``version`` is
    MODULE_VERSION's attribute, for the modules that declare one."""
    base = tree.root / "module" / name
    (base / "holders").mkdir(parents=True, exist_ok=True)
    put(base / "refcnt", "0\n", 0o444)
    if version:
        put(base / "version", version + "\n", 0o444)
    for target in uses:
        link(tree.root / "module" / target / "holders" / name, base)


def unload_module(tree: Tree, name: str) -> None:
    """What mod_sysfs_teardown removes: the module's links in the holders of what it used
    (del_usage_links), then its own folder."""
    import shutil

    for entry in tree.root.glob(f"module/*/holders/{name}"):
        if entry.is_symlink():
            entry.unlink()
    shutil.rmtree(tree.root / "module" / name, ignore_errors=True)


def module_holders(tree: Tree, name: str) -> list[str]:
    """The modules that use this one (its holders/ entries). kernfs lists a folder by name hash;
    sorted here so that messages are stable."""
    try:
        return sorted(p.name for p in (tree.root / "module" / name / "holders").iterdir())
    except OSError:
        return []
