"""The simulated node's processes and device nodes: who has which device file open.

On a real node a process holds a GPU through an open descriptor of its character device, and
``/proc/<pid>/fd/<n>`` is a link to the node it opened. What identifies the device is the node's
``st_rdev``, not the link's text (a container may name the node anything): the open modules
register major 195 for the GPUs, minors 0..247 one per GPU, 254 ``nvidia-modeset`` and 255
``nvidiactl`` (``kernel-open/common/inc/nv-chardev-numbers.h``; ``nv.c`` ``nv_register_chrdev``).
``nvidia-uvm`` and ``nvidia-caps`` take dynamic majors (``alloc_chrdev_region``), named in
``/proc/devices``; so do the vfio group nodes (``drivers/vfio/group.c``, ``vfio_group_init``) and
the vfio cdevs (``drivers/vfio/device_cdev.c``). The misc device ``/dev/vfio/vfio`` is 10:196
(``include/linux/miscdevice.h`` VFIO_MINOR).

This table is what the simulated kernel answers from: ``/proc/<pid>/fd`` links under the simulated
procfs root, the device nodes as plain files under the simulated ``/dev`` (no ``mknod`` needed),
and ``stat`` (the node's stat seam) giving each simulated node its major:minor. A stat of anything
else goes to ``os.stat``, so a link to a regular file reads as one.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import NamedTuple

NVIDIA_MAJOR = 195
MODESET_MINOR = 254
CTL_MINOR = 255
UVM_MAJOR = 510  # dynamic on a real node; read from /proc/devices
CAPS_MAJOR = 509
VFIO_GROUP_MAJOR = 511
VFIO_CDEV_MAJOR = 508
# /dev/iommu: drivers/iommu/iommufd/main.c iommu_misc_dev has .minor = MISC_DYNAMIC_MINOR, so its
# minor is allocated at registration; 124 is the simulator's choice [I]. VFIO_MINOR 196 is fixed.
MISC_MAJOR, VFIO_MISC_MINOR, IOMMU_MINOR = 10, 196, 124
ANY_MINOR = -1  # in holders(): every minor of the major
FIRST_PID = 40_000  # pids the simulated node hands out; scenario holders keep their own


class DeviceNumber(NamedTuple):
    major: int
    minor: int


class StatResult(NamedTuple):
    """What the holder scan needs of ``os.stat``: a character device's number, or a regular file."""

    st_mode: int
    st_rdev: int


def makedev(major: int, minor: int) -> int:
    return os.makedev(major, minor)


def proc_devices(modules: set[str] | frozenset[str] = frozenset({"nvidia", "nvidia_uvm"})) -> str:
    """/proc/devices as fs/proc/devices.c devinfo_show prints it ("%3d %s", by major): nvidia.ko
    registers nvidia, nvidiactl, nvidia-modeset (nv.c nv_register_chrdev) and nvidia-caps
    (nv-caps.c nv_cap_drv_init); nvidia-uvm.ko its own; vfio.ko vfio and vfio-dev."""
    chars = [(1, "mem"), (4, "/dev/vc/0"), (4, "tty"), (5, "/dev/tty"), (10, "misc"),
             (VFIO_CDEV_MAJOR, "vfio-dev"), (VFIO_GROUP_MAJOR, "vfio")]
    if "nvidia" in modules:
        chars += [(NVIDIA_MAJOR, "nvidia"), (NVIDIA_MAJOR, "nvidia-modeset"), (NVIDIA_MAJOR, "nvidiactl"),
                  (CAPS_MAJOR, "nvidia-caps")]
    if "nvidia_uvm" in modules:
        chars.append((UVM_MAJOR, "nvidia-uvm"))
    lines = ["Character devices:"] + [f"{major:3d} {name}" for major, name in sorted(chars, key=lambda c: c[0])]
    lines += ["", "Block devices:", "  7 loop", "  8 sd", "259 blkext"]
    return "\n".join(lines) + "\n"


PROC_DEVICES = proc_devices()

# /proc/misc (drivers/char/misc.c misc_seq_show, "%3i %s"): vfio's container node and iommufd.
PROC_MISC = f"{IOMMU_MINOR:3d} iommu\n{VFIO_MISC_MINOR:3d} vfio\n"


class SimProcesses:
    """Processes of the simulated node and the device files they hold open."""

    def __init__(self, proc_root: Path, dev_root: Path) -> None:
        self.proc_root = Path(proc_root)
        self.dev_root = Path(dev_root)
        self._lock = threading.Lock()
        self._pids = itertools.count(FIRST_PID)
        self._fds: dict[int, itertools.count] = {}
        self.devices: dict[str, DeviceNumber] = {}  # path under dev_root -> its number
        self._on_close: list = []  # called after any descriptor closes (the kernel's waiters)
        self.proc_root.mkdir(parents=True, exist_ok=True)
        self.dev_root.mkdir(parents=True, exist_ok=True)
        (self.proc_root / "devices").write_text(PROC_DEVICES)
        (self.proc_root / "misc").write_text(PROC_MISC)
        self.add_device("nvidiactl", NVIDIA_MAJOR, CTL_MINOR)
        self.add_device("nvidia-modeset", NVIDIA_MAJOR, MODESET_MINOR)
        self.add_device("nvidia-uvm", UVM_MAJOR, 0)
        self.add_device("nvidia-uvm-tools", UVM_MAJOR, 1)
        self.add_device("vfio/vfio", MISC_MAJOR, VFIO_MISC_MINOR)
        self.add_device("iommu", MISC_MAJOR, IOMMU_MINOR)
        # The gpusoak process itself: whatever the soak opens in process (an NVML session, say)
        # is held by this pid, so the holder scan and the kernel model see it as they would.
        self.self_pid = self.spawn("gpusoak")

    # -- device nodes --------------------------------------------------------------------------
    def add_device(self, name: str, major: int, minor: int) -> Path:
        """A device node under the simulated /dev (what udev or nvidia-modprobe creates)."""
        path = self.dev_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self.devices[name] = DeviceNumber(major, minor)
        return path

    def remove_device(self, name: str) -> None:
        self.devices.pop(name, None)
        (self.dev_root / name).unlink(missing_ok=True)

    def stat(self, path: str | os.PathLike) -> StatResult | os.stat_result:
        """``os.stat`` for the holder scan: follows ``/proc/<pid>/fd`` links; a simulated device
        node reads as a character device with its number."""
        target = Path(path)
        if target.is_symlink():
            target = Path(os.path.realpath(target))
        try:
            rel = target.relative_to(self.dev_root)
        except ValueError:
            return os.stat(target)
        number = self.devices.get(str(rel))
        if number is None:
            return os.stat(target)
        return StatResult(0o020600, makedev(*number))  # S_IFCHR | 0600

    # -- processes -----------------------------------------------------------------------------
    def spawn(self, comm: str, pid: int | None = None, unit: str | None = None) -> int:
        """A new process; its ``comm`` is what ps shows (never used to find holders). ``unit``: the
        systemd service it runs in, named by ``/proc/<pid>/cgroup`` as cgroup v2 writes it
        (``0::/system.slice/<unit>.service``; Documentation/admin-guide/cgroup-v2.rst); others sit
        in a login session's scope."""
        with self._lock:
            pid = next(self._pids) if pid is None else pid
            (self.proc_root / str(pid) / "fd").mkdir(parents=True, exist_ok=True)
            (self.proc_root / str(pid) / "comm").write_text(comm + "\n")
            cgroup = f"/system.slice/{unit}.service" if unit else "/user.slice/user-0.slice/session-1.scope"
            (self.proc_root / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
            # fs/proc/array.c proc_pid_status: NSpid lists the pid in each nested PID namespace;
            # one entry: the process sees the node's own namespace (what gpusoak needs to look).
            (self.proc_root / str(pid) / "status").write_text(f"Name:\t{comm[:15]}\nPid:\t{pid}\nNSpid:\t{pid}\n")
            self._fds[pid] = itertools.count(3)
        return pid

    def open(self, pid: int, device: str | os.PathLike) -> int:
        """``pid`` opens a node: ``device`` is a name under the simulated /dev ("nvidia3") or an
        absolute path (a renamed node in a container, anything else). Returns the descriptor."""
        target = Path(device) if os.path.isabs(device) else self.dev_root / device
        with self._lock:
            if pid not in self._fds:
                raise ProcessLookupError(pid)
            fd = next(self._fds[pid])
            os.symlink(target, self.proc_root / str(pid) / "fd" / str(fd))
        return fd

    def on_close(self, listener) -> None:
        self._on_close.append(listener)

    def _notify(self) -> None:
        for listener in self._on_close:
            listener()

    def close(self, pid: int, fd: int) -> None:
        (self.proc_root / str(pid) / "fd" / str(fd)).unlink(missing_ok=True)
        self._notify()

    def exit(self, pid: int) -> None:
        """The process ends: its descriptors close, its /proc entry goes."""
        with self._lock:
            self._fds.pop(pid, None)
            base = self.proc_root / str(pid)
            for entry in (base / "fd").glob("*"):
                entry.unlink(missing_ok=True)
            if (base / "fd").is_dir():
                (base / "fd").rmdir()
            (base / "comm").unlink(missing_ok=True)
            (base / "cgroup").unlink(missing_ok=True)
            (base / "status").unlink(missing_ok=True)
            if base.is_dir():
                base.rmdir()
        self._notify()

    def held_by(self, pid: int) -> tuple[str, ...]:
        """The simulated device nodes ``pid`` has open, by name under the simulated /dev."""
        out = []
        try:
            fds = sorted((self.proc_root / str(pid) / "fd").iterdir())
        except OSError:
            return ()
        for fd in fds:
            try:
                rel = Path(os.readlink(fd)).relative_to(self.dev_root)
            except (OSError, ValueError):
                continue
            if str(rel) in self.devices:
                out.append(str(rel))
        return tuple(out)

    def holders(self, number: DeviceNumber) -> list[int]:
        """PIDs with that device open: what the kernel's open count for it says. A minor of
        ``ANY_MINOR`` counts every device of that major (a module's whole cdev region)."""
        rdev = makedev(*number) if number.minor != ANY_MINOR else None
        out = []
        for pid_dir in self.proc_root.iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                fds = list((pid_dir / "fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    st = self.stat(fd)
                except OSError:
                    continue
                dev = getattr(st, "st_rdev", 0)
                if (st.st_mode & 0o170000) == 0o020000 and (
                        dev == rdev if rdev is not None else os.major(dev) == number.major):
                    out.append(int(pid_dir.name))
                    break
        return sorted(out)
