"""Who holds a device: /proc/<pid>/fd entries whose target is that character device.

A process is found by the files it has open, never by its name (the way careful reset tools do
it), and a file by its device number (``st_rdev``), never by the link's text: a container's
renamed node (/dev/gpu0 for /dev/nvidia0) is the same device. The procfs root and the stat call
are injectable so tests and the simulator point them at trees of their own.

A scan that could not read everything says so (``Scan.unreadable``, or ``CannotLook`` when /proc
itself cannot be listed): a holder it could not see has not been ruled out.

The numbers come from the kernel's own tables, read here: ``/proc/devices`` (the majors of
dynamically numbered drivers, fs/proc/devices.c devinfo_show, "%3d %s"), ``/proc/misc``
(drivers/char/misc.c misc_seq_show, "%3i %s"), the NVIDIA driver's
``/proc/driver/nvidia/gpus/<bdf>/information`` (its "Device Minor:" line) and
``/proc/driver/nvidia-caps/mig-minors``.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_mode
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gpusoak.errors import CannotLook
from gpusoak.model import PciAddress

ANY_MINOR = -1  # in a wanted (major, minor): every minor of that major
# kernel-open/common/inc/nv-chardev-numbers.h NV_MAJOR_DEVICE_NUMBER: minors 0..247 are the GPUs,
# 254 nvidia-modeset, 255 nvidiactl
NVIDIA_MAJOR = 195


@dataclass(frozen=True)
class Holder:
    pid: int
    path: str  # the device node it holds open, e.g. /dev/nvidia3
    what: str = ""  # which wanted device it is, e.g. "/dev/nvidiactl" (the label it was asked for)


@dataclass(frozen=True)
class Scan:
    holders: tuple[Holder, ...]
    unreadable: tuple[str, ...] = ()  # fd folders that exist but could not be read: not ruled out


def scan_holders(wanted: Mapping[tuple[int, int], str], proc_root: Path | str = "/proc",
                 stat: Callable[[str], os.stat_result] = os.stat) -> Scan:
    """Processes with any of the ``wanted`` character devices open, found by ``st_rdev``.
    ``wanted`` maps (major, minor) - minor ``ANY_MINOR`` for all of a major - to a label.
    A process that exited meanwhile is skipped; one whose fd folder cannot be read is named in
    ``unreadable``; an unlistable /proc raises ``CannotLook``."""
    exact = {os.makedev(ma, mi): label for (ma, mi), label in wanted.items() if mi != ANY_MINOR}
    majors = {ma: label for (ma, mi), label in wanted.items() if mi == ANY_MINOR}
    proc_root = Path(proc_root)
    try:
        pids = sorted(int(n) for n in os.listdir(proc_root) if n.isdigit())
    except OSError as err:
        raise CannotLook(f"cannot list processes: {err.strerror or err}", path=str(proc_root)) from err
    holders: list[Holder] = []
    unreadable: list[str] = []
    for pid in pids:
        fd_dir = proc_root / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except OSError as err:
            if err.errno == errno.ESRCH:
                continue
            unreadable.append(str(fd_dir))  # EACCES: not root, no CAP_SYS_PTRACE, hidepid
            continue
        for fd in fds:
            try:
                st = stat(str(fd_dir / fd))
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue  # closed meanwhile
            if not stat_mode.S_ISCHR(st.st_mode):
                continue
            label = exact.get(st.st_rdev) or majors.get(os.major(st.st_rdev))
            if label is not None:
                holders.append(Holder(pid, target, label))
                break
    return Scan(tuple(holders), tuple(unreadable))


# -- the kernel's device-number tables --------------------------------------------------------------
def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise CannotLook(f"cannot read {path.name}: {err.strerror or err}", path=str(path)) from err


def _proc_devices(proc_root: Path | str, section: str) -> list[tuple[int, str]]:
    """(major, name) lines of one part of /proc/devices ("Character devices:" or "Block devices:")."""
    out: list[tuple[int, str]] = []
    current = None
    for line in _read(Path(proc_root) / "devices").splitlines():
        if line.endswith(":"):
            current = line
            continue
        parts = line.split(None, 1)
        if current == section and len(parts) == 2 and parts[0].isdigit():
            out.append((int(parts[0]), parts[1].strip()))
    return out


def char_majors(proc_root: Path | str) -> dict[str, int]:
    """Character-device majors by driver name, from /proc/devices (its "Character devices:" part)."""
    out: dict[str, int] = {}
    for major, name in _proc_devices(proc_root, "Character devices:"):
        out.setdefault(name, major)
    return out


def block_majors(proc_root: Path | str) -> dict[int, str]:
    """Block-device driver names by major (md, device-mapper, ...), from /proc/devices."""
    return dict(_proc_devices(proc_root, "Block devices:"))


def misc_minor(proc_root: Path | str, name: str) -> int | None:
    """The minor of a misc device (major 10) by name, from /proc/misc; None if not registered."""
    for line in _read(Path(proc_root) / "misc").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1] == name:
            return int(parts[0])
    return None


_MINOR_LINE = re.compile(r"^Device Minor:\s*(\d+)\s*$", re.MULTILINE)


def procfs_minor(proc_root: Path | str, bdf: PciAddress) -> tuple[int | None, str]:
    """The GPU's minor from the driver's procfs (nv-procfs.c nv_procfs_read_gpu_info prints
    "Device Minor: \\t %u"; the folder is named "%04x:%02x:%02x.%1x" by nv_procfs_add_gpu).
    (minor, "") or (None, why not)."""
    path = Path(proc_root) / "driver" / "nvidia" / "gpus" / str(bdf) / "information"
    try:
        text = path.read_text()
    except OSError as err:
        return None, f"{path}: {err.strerror or err}"
    m = _MINOR_LINE.search(text)
    return (int(m.group(1)), "") if m else (None, f"{path}: no Device Minor line")


def mig_minors(proc_root: Path | str, gpu_minor: int) -> list[int]:
    """The nvidia-caps minors of one GPU's MIG instances (gpu<minor>/gi*/access, .../ci*/access),
    from /proc/driver/nvidia-caps/mig-minors (nv-caps.c nv_procfs_read_mig_minors prints
    "gpu%d/%s %d"; RM names the folder after the device minor, os.c osRmCapRegisterGpu)."""
    # The file lists every possible instance of every possible GPU (some 4,300 lines on an 8-GPU
    # node): one regex over the text, not a split of each line.
    text = _read(Path(proc_root) / "driver" / "nvidia-caps" / "mig-minors")
    return [int(m) for m in re.findall(rf"^gpu{int(gpu_minor)}/\S+[ \t]+(\d+)[ \t]*$", text, flags=re.M)]



def own_device_files(node) -> str | None:
    """What of the NVIDIA devices this process itself holds open, or None. The soak process must
    hold none across an action (an NVML session or CUDA context in it would block or break the
    reset it is about to make); a process that cannot read its own fd folder cannot tell."""
    fd_dir = Path(node.proc_root) / str(node.pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError as err:
        return f"cannot read {fd_dir}: {err.strerror}"
    majors = {NVIDIA_MAJOR}
    try:  # nvidia-uvm and nvidia-caps have dynamic majors: a CUDA context holds nvidia-uvm too
        table = char_majors(node.proc_root)
        majors |= {table[n] for n in ("nvidia-uvm", "nvidia-caps") if n in table}
    except CannotLook:
        pass  # major 195 is still looked for
    held = []
    for fd in fds:
        try:
            st = node.stat(str(fd_dir / fd))
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if stat_mode.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in majors:
            held.append(f"fd {fd} -> {target}")
    return f"gpusoak's own process (pid {node.pid}) holds {', '.join(sorted(held))}" if held else None


def nested_pid_namespace(proc_root: Path | str, pid: int) -> str | None:
    """Why a process cannot see the node's processes, or None. ``NSpid`` in /proc/<pid>/status
    (fs/proc/array.c proc_pid_status, Linux 4.1 and later) lists the pid in each PID namespace
    from the outermost in; more than one entry: it runs in a namespace of its own (a container
    without hostPID), where /proc shows none of the host's holders (persistenced, DCGM, a VM)."""
    try:
        text = (Path(proc_root) / str(pid) / "status").read_text()
    except OSError:
        return None  # no status to read (a kernel before NSpid, a hand-built tree): nothing known
    for line in text.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            if len(ids) > 1:
                return (f"gpusoak runs in a PID namespace of its own (NSpid {' '.join(ids)}): the node's "
                        "processes outside it cannot be seen in /proc (run it with the host's PID namespace)")
    return None
