"""PCI devices over a sysfs root.

Reads are plain file reads under ``root`` (``/sys`` on a node, a temporary tree in tests and in the
simulator). Every write goes through one ``Writer``: the real one writes the file, the simulator's
applies the kernel's effect. A file that this kernel lacks reads as None (NA): unsupported is not
broken. A PCI address enters a path only as a ``PciAddress``.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpusoak.errors import DeviceGone, GpusoakError, Hung, SysfsError, from_oserror
from gpusoak.model import LinkState, PciAddress

NVIDIA_VENDOR = 0x10DE
DISPLAY_CLASS = 0x03  # PCI base class "display controller": VGA 0x0300, 3D 0x0302

# Attribute names written by gpusoak. Nothing else is ever written under a device directory.
RESET, RESET_METHOD, REMOVE, DRIVER_OVERRIDE = "reset", "reset_method", "remove", "driver_override"


class Writer(Protocol):
    def __call__(self, path: Path, data: str) -> None: ...


def real_write(path: Path, data: str) -> None:
    """Write a sysfs attribute the way ``echo data > path`` does: one write(2) call."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class InFlight:
    """A write that has not returned yet: still blocked in the kernel after its deadline (``Hung``)."""

    path: Path
    data: str
    what: str
    started_s: float  # time.monotonic() when it was issued

    def concerns(self, function_dir: Path, bdf: PciAddress) -> bool:
        """Under the function's directory (reset, reset_method, remove, driver_override), or a
        driver or bus control file given its address (bind, unbind, drivers_probe)."""
        return self.path.parent == function_dir or function_dir in self.path.parents \
            or self.data.strip() == str(bdf)


@dataclass(frozen=True)
class AerCounters:
    """One ``aer_dev_*`` file: per-bit counts and the total line."""

    counts: dict[str, int]
    total: int


def parse_aer_counters(text: str) -> AerCounters:
    """Parse ``<name> <count>`` lines ending with ``TOTAL_ERR_{COR,FATAL,NONFATAL} <n>``.

    Bit names changed across kernels (6.12 ``RxErr``, 4.19 ``Receiver Error``), so a name is
    everything before the last field.
    """
    counts: dict[str, int] = {}
    total: int | None = None
    for line in text.splitlines():
        name, _, value = line.strip().rpartition(" ")
        if not name or not value.isdigit():
            continue
        if name.startswith("TOTAL_ERR_"):
            total = int(value)
        else:
            counts[name.strip()] = int(value)
    if total is None:
        raise ValueError("no TOTAL_ERR_ line")
    return AerCounters(counts, total)


class Sysfs:
    """A sysfs tree: ``root`` is ``/sys`` on a node."""

    def __init__(self, root: Path | str = "/sys", writer: Writer = real_write, timeout_scale: float = 1.0,
                 reader=None) -> None:
        self.root = Path(root)
        self._writer = writer
        # Reads are plain file reads; the simulator's reader may answer a read with the errno the
        # kernel's show() function would return (a dead device's link attributes).
        self._reader = reader or (lambda path: path.read_text())
        # Real seconds waited per second of deadline. The simulator's writes take simulated time,
        # so a simulated hang is caught after a small fraction of the deadline in real time.
        self.timeout_scale = timeout_scale
        # Writes whose thread is still in the kernel, until they return (which a hung one may never).
        self._in_flight: dict[int, tuple[InFlight, threading.Thread]] = {}
        self._in_flight_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------
    def read(self, path: Path) -> str | None:
        """The file's text stripped of its newline; None if the file does not exist (NA)."""
        try:
            return self._reader(path).rstrip("\n")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise from_oserror(err, "reading sysfs", path=str(path)) from err

    @property
    def devices_dir(self) -> Path:
        return self.root / "bus" / "pci" / "devices"

    def pci_devices(self) -> list[PciAddress]:
        try:
            names = sorted(os.listdir(self.devices_dir))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise from_oserror(err, "listing PCI devices", path=str(self.devices_dir)) from err
        out = []
        for name in names:
            try:
                out.append(PciAddress.parse(name))
            except GpusoakError:
                continue  # not a PCI function entry; the kernel puts nothing else here
        return out

    def function(self, bdf: PciAddress) -> PciFunction:
        return PciFunction(self, bdf)

    def bus_rescan_file(self, port: PciAddress, bdf: PciAddress) -> Path:
        """The rescan file of the bus ``bdf`` sits on, below ``port`` (see PciFunction.bus_rescan_file)."""
        return self.devices_dir / str(port) / "pci_bus" / f"{bdf.domain:04x}:{bdf.bus:02x}" / "rescan"

    def nvidia_gpus(self) -> list[PciAddress]:
        """NVIDIA display-class functions (graphics function of each GPU), in address order."""
        gpus = []
        for bdf in self.pci_devices():
            fn = self.function(bdf)
            if fn.vendor == NVIDIA_VENDOR and fn.pci_class is not None and fn.pci_class >> 16 == DISPLAY_CLASS:
                gpus.append(bdf)
        return gpus

    # -- writing -------------------------------------------------------------------------------
    def write(self, path: Path, data: str, *, timeout_s: float, what: str) -> None:
        """Write through the one seam, with a deadline.

        Unbind, remove and reset of a GPU can block in the kernel while anything holds the device;
        a wedged GPU can block forever. The write runs in a daemon thread so that a block becomes
        ``Hung`` here instead of freezing the run (the thread itself stays blocked in the kernel).
        """
        outcome: list[BaseException | None] = []
        record = InFlight(Path(path), data, what, time.monotonic())

        def work() -> None:
            try:
                self._writer(path, data)
                outcome.append(None)
            except BaseException as err:  # handed to the caller below
                outcome.append(err)
            finally:
                with self._in_flight_lock:
                    self._in_flight.pop(threading.get_ident(), None)

        # In a copy of this context: on the simulator, the write's time is this worker's time.
        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(work,), name=f"sysfs-write {path.name}", daemon=True)
        with self._in_flight_lock:  # registered before it runs, so it cannot finish unregistered
            worker.start()
            self._in_flight[worker.ident] = (record, worker)
        worker.join(timeout_s * self.timeout_scale)
        if worker.is_alive():
            raise Hung(f"{what}: write did not return within {timeout_s:g} s", path=str(path))
        err = outcome[0]
        if err is None:
            return
        if isinstance(err, OSError):
            raise from_oserror(err, what, path=str(path)) from err
        raise err


    def in_flight(self, bdf: PciAddress) -> list[InFlight]:
        """Writes concerning this function that have not returned (see ``InFlight.concerns``)."""
        fn_dir = self.devices_dir / str(bdf)
        with self._in_flight_lock:
            return [r for r, _ in self._in_flight.values() if r.concerns(fn_dir, bdf)]

    def wait_for_writes(self, bdf: PciAddress, timeout_s: float) -> list[InFlight]:
        """Wait up to ``timeout_s`` (scaled like a write's deadline) for this function's writes
        still in the kernel to return; what is still in flight afterwards. Anything else written
        to the device meanwhile would race the blocked write (a reset_method put back while the
        reset it belongs to still runs, a bind while the unbind is stuck)."""
        fn_dir = self.devices_dir / str(bdf)
        deadline = time.monotonic() + timeout_s * self.timeout_scale
        with self._in_flight_lock:
            threads = [t for r, t in self._in_flight.values() if r.concerns(fn_dir, bdf)]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return self.in_flight(bdf)


class PciFunction:
    """Typed accessors over one function's sysfs directory; every read is fresh."""

    def __init__(self, sysfs: Sysfs, bdf: PciAddress) -> None:
        self.sysfs = sysfs
        self.bdf = bdf
        self.path = sysfs.devices_dir / str(bdf)

    def _attr(self, name: str) -> str | None:
        return self.sysfs.read(self.path / name)

    def _hex(self, name: str) -> int | None:
        text = self._attr(name)
        if text is None:
            return None
        try:
            return int(text, 16)
        except ValueError as err:
            raise SysfsError(f"unexpected value {text!r}", path=str(self.path / name)) from err

    def _int(self, name: str) -> int | None:
        text = self._attr(name)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError as err:
            raise SysfsError(f"unexpected value {text!r}", path=str(self.path / name)) from err

    @property
    def present(self) -> bool:
        return self.path.exists()

    def require_present(self) -> None:
        if not self.present:
            raise DeviceGone("PCI function not present in sysfs", bdf=str(self.bdf))

    @property
    def vendor(self) -> int | None:
        return self._hex("vendor")

    @property
    def device_id(self) -> int | None:
        return self._hex("device")

    @property
    def pci_class(self) -> int | None:
        return self._hex("class")

    @property
    def reset_methods(self) -> tuple[str, ...] | None:
        """Enabled reset methods in the kernel's order; None where the kernel has no such file."""
        text = self._attr(RESET_METHOD)
        return None if text is None else tuple(text.split())

    @property
    def can_reset(self) -> bool:
        # The kernel creates "reset" only when some reset method is supported.
        return (self.path / RESET).exists()

    @property
    def power_state(self) -> str | None:
        return self._attr("power_state")

    @property
    def runtime_pm(self) -> str | None:
        return self._attr("power/control")

    @property
    def driver_override(self) -> str | None:
        text = self._attr(DRIVER_OVERRIDE)
        return None if text in (None, "(null)", "") else text

    @property
    def link(self) -> LinkState:
        return LinkState(
            current_speed=self._attr("current_link_speed"),
            current_width=self._int("current_link_width"),
            max_speed=self._attr("max_link_speed"),
            max_width=self._int("max_link_width"),
        )

    @property
    def driver(self) -> str | None:
        link = self.path / "driver"
        try:
            return os.path.basename(os.readlink(link))
        except FileNotFoundError:
            return None
        except OSError as err:
            raise from_oserror(err, "reading driver link", path=str(link)) from err

    @property
    def iommu_group(self) -> int | None:
        try:
            return int(os.path.basename(os.readlink(self.path / "iommu_group")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise SysfsError(f"unreadable iommu_group: {err}", path=str(self.path)) from err

    def iommu_group_members(self) -> list[PciAddress]:
        """Every function in this function's IOMMU group (all must go to vfio-pci together)."""
        devices = self.path / "iommu_group" / "devices"
        try:
            names = os.listdir(devices)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise from_oserror(err, "listing the IOMMU group", path=str(devices)) from err
        return sorted(b for b in (_parse_or_none(n) for n in names) if b is not None)

    def aer(self, kind: str) -> AerCounters | None:
        """``kind`` is correctable, nonfatal or fatal; None where the kernel has no AER stats."""
        if kind not in ("correctable", "nonfatal", "fatal"):
            raise ValueError(kind)
        text = self._attr(f"aer_dev_{kind}")
        if text is None:
            return None
        try:
            return parse_aer_counters(text)
        except ValueError as err:
            raise SysfsError(f"unreadable AER counters: {err}", path=str(self.path / f"aer_dev_{kind}")) from err

    # -- topology ------------------------------------------------------------------------------
    def _real_dir(self) -> Path:
        try:
            return self.path.resolve(strict=True)
        except FileNotFoundError as err:
            raise DeviceGone("PCI function not present in sysfs", bdf=str(self.bdf)) from err

    @property
    def upstream_port(self) -> PciAddress | None:
        """The bridge this function sits behind (its parent in the device tree); None at a root bus."""
        parent = self._real_dir().parent.name
        try:
            return PciAddress.parse(parent)
        except GpusoakError:
            return None  # parent is pci0000:00 (a host bridge's root bus)

    def behind_upstream_port(self) -> list[PciAddress]:
        """Every function below this function's upstream port: its reset domain for a bus reset."""
        real = self._real_dir()
        below = []
        for _, dirnames, _ in os.walk(real.parent):
            for name in dirnames:
                try:
                    below.append(PciAddress.parse(name))
                except GpusoakError:
                    continue
            dirnames[:] = [d for d in dirnames if _looks_like_bdf(d)]
        return sorted(set(below))

    def bus_rescan_file(self) -> Path | None:
        """The ``rescan`` file of the bus this function sits on, under its upstream port:
        ``/sys/bus/pci/devices/<port>/pci_bus/DDDD:BB/rescan``; None on a root bus (no port).

        Three rescans exist (drivers/pci/pci-sysfs.c): ``/sys/bus/pci/rescan`` (``rescan_store``)
        rescans every bus, re-adding every device anyone removed, on purpose or not; a device's own
        ``rescan`` (``dev_rescan_store``) rescans the bus that device sits on, for a root port nearly
        the whole tree; the pci_bus class device's ``rescan`` (``bus_rescan_store``) rescans that
        bus alone, and the buses below it (``pci_rescan_bus``, drivers/pci/probe.c: "Scan a PCI bus
        and child buses"). The class device is named ``%04x:%02x`` (``pci_alloc_child_bus``) and is
        kept while the bridge exists, also when nothing is left on the bus.
        Read this before the function is removed: afterwards it has no directory to find the port by.
        """
        port = self.upstream_port
        return None if port is None else self.sysfs.bus_rescan_file(port, self.bdf)

    def sibling_functions(self) -> list[PciAddress]:
        """Other functions of the same slot (a GPU's audio or USB-C function)."""
        return [b for b in self.sysfs.pci_devices()
                if b.slot == self.bdf.slot and b != self.bdf]


def _parse_or_none(name: str) -> PciAddress | None:
    try:
        return PciAddress.parse(name)
    except GpusoakError:
        return None


def _looks_like_bdf(name: str) -> bool:
    return _parse_or_none(name) is not None
