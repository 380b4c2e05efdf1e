"""Who holds a device: /proc/<pid>/fd entries whose target is that character device.

A process is found by the files it has open, never by its name (the way careful reset tools do
it), and a file by its device number (``st_rdev``), never by the link's text: a container's
renamed node (/dev/gpu0 for /dev/nvidia0) is the same device. The procfs root and the stat call
are injectable so tests and the simulator point them at trees of their own.
"""

from __future__ import annotations

import os
import stat as stat_mode
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Holder:
    pid: int
    path: str  # the device node it holds open, e.g. /dev/nvidia3


def rdev_holders(numbers: Iterable[tuple[int, int]], proc_root: Path | str = "/proc",
                 stat: Callable[[str], os.stat_result] = os.stat) -> list[Holder]:
    """Processes with any of these character devices (major, minor) open, found by ``st_rdev``.
    Unreadable processes (gone, or not ours) are skipped."""
    wanted = {os.makedev(major, minor) for major, minor in numbers}
    proc_root = Path(proc_root)
    holders = []
    try:
        pids = [int(n) for n in os.listdir(proc_root) if n.isdigit()]
    except FileNotFoundError:
        return []
    for pid in sorted(pids):
        fd_dir = proc_root / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited meanwhile, or not readable without root
        for fd in fds:
            try:
                st = stat(str(fd_dir / fd))
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if stat_mode.S_ISCHR(st.st_mode) and st.st_rdev in wanted:
                holders.append(Holder(pid, target))
                break
    return holders


def device_holders(device_nodes: set[str], proc_root: Path | str = "/proc") -> list[Holder]:
    """Processes with any of ``device_nodes`` open. Unreadable processes (gone, or not ours) are skipped."""
    proc_root = Path(proc_root)
    holders = []
    try:
        pids = [int(n) for n in os.listdir(proc_root) if n.isdigit()]
    except FileNotFoundError:
        return []
    for pid in sorted(pids):
        fd_dir = proc_root / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited meanwhile, or not readable without root
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target in device_nodes:
                holders.append(Holder(pid, target))
                break
    return holders


NVIDIA_MAJOR = 195  # kernel-open/common/inc/nv-chardev-numbers.h NV_MAJOR_DEVICE_NUMBER


def own_device_files(node) -> str | None:
    """What of the NVIDIA devices this process itself holds open, or None. The soak process must
    hold none across an action (an NVML session or CUDA context in it would block or break the
    reset it is about to make); a process that cannot read its own fd folder cannot tell."""
    fd_dir = Path(node.proc_root) / str(node.pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError as err:
        return f"cannot read {fd_dir}: {err.strerror}"
    held = []
    for fd in fds:
        try:
            st = node.stat(str(fd_dir / fd))
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if stat_mode.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == NVIDIA_MAJOR:
            held.append(f"fd {fd} -> {target}")
    return f"gpusoak's own process (pid {node.pid}) holds {', '.join(sorted(held))}" if held else None
