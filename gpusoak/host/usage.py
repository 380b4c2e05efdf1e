"""What a PCI function that is not a GPU carries for the node: file systems, swap, stacked block
devices, network interfaces in use. Resetting, unbinding or unloading its driver takes them away.

Read the way the kernel exposes them:

- Block devices below the function: every ``/sys/class/block/<name>`` (disks and partitions,
  block/genhd.c and block/partitions/core.c) whose device folder lies under the function's own
  (``.../<bdf>/nvme/nvme0/nvme0n1``, ``.../<bdf>/host0/.../block/sda``), with its ``dev``
  ("%u:%u", drivers/base/core.c dev_show).
- Mounted: ``/proc/self/mountinfo`` (and PID 1's, another mount namespace where it can be read),
  whose third field is the file system's st_dev "major:minor" (fs/proc_namespace.c
  show_mountinfo); the source after " - <type> " is compared by name too, for file systems on an
  anonymous st_dev (btrfs).
- Swap: ``/proc/swaps`` (mm/swapfile.c swap_show prints the opened path; a swap *file* lives on a
  mounted file system, which the mount check covers).
- Stacked: ``/sys/class/block/<name>/holders/`` lists md and dm devices built on it
  (block/holder.c bd_link_disk_holder, called by drivers/md/md.c and dm-table.c).
- Network: ``/sys/class/net/<if>`` under the function, its ``flags`` ("%#x", net/core/net-sysfs.c;
  IFF_UP is 0x1, include/uapi/linux/if.h), ``upper_*`` links to devices stacked on it (bond,
  bridge, vlan: net/core/dev.c netdev_adjacent_sysfs_add), and its addresses from
  ``ip -j addr show dev <if>`` (iproute2's JSON) through the node's runner. IPv6 link-local
  addresses do not count: the kernel gives one to every interface that comes up
  (net/ipv6/addrconf.c addrconf_dev_config), so they say nothing about use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gpusoak.errors import CannotLook
from gpusoak.host.commands import Runner
from gpusoak.host.sysfs import Sysfs
from gpusoak.model import PciAddress

IFF_UP = 0x1


@dataclass(frozen=True)
class Uses:
    uses: tuple[str, ...]  # what the node would lose, e.g. "nvme0n1p1 is mounted on /data"
    unreadable: tuple[str, ...] = ()  # what could not be read (a use there is not ruled out)


def function_uses(sysfs: Sysfs, proc_root: Path, runner: Runner, bdf: PciAddress,
                  timeout_s: float = 10.0) -> Uses:
    uses: list[str] = []
    unreadable: list[str] = []
    try:
        here = os.path.realpath(sysfs.function(bdf).path)
    except OSError as err:
        return Uses((), (f"{sysfs.function(bdf).path}: {err.strerror or err}",))
    for check in (_block_uses, _net_uses):
        try:
            uses += check(sysfs, proc_root, runner, here, timeout_s)
        except CannotLook as err:
            unreadable.append(str(err))
    return Uses(tuple(uses), tuple(unreadable))


def _below(sysfs_dir: Path, here: str) -> list[tuple[str, str]]:
    """(name, real path) of each entry of a class folder whose device lies under ``here``."""
    try:
        names = sorted(os.listdir(sysfs_dir))
    except OSError as err:
        raise CannotLook(f"cannot list {sysfs_dir}: {err.strerror or err}", path=str(sysfs_dir)) from err
    out = []
    for name in names:
        real = os.path.realpath(sysfs_dir / name)
        if real.startswith(here + os.sep):
            out.append((name, real))
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise CannotLook(f"cannot read {path}: {err.strerror or err}", path=str(path)) from err


# -- block ----------------------------------------------------------------------------------------
def _block_uses(sysfs: Sysfs, proc_root: Path, runner: Runner, here: str, timeout_s: float) -> list[str]:
    disks = _below(sysfs.root / "class" / "block", here)
    if not disks:
        return []
    numbers = {}
    out = []
    for name, real in disks:
        numbers[_read(Path(real) / "dev").strip()] = name
        try:
            stacked = sorted(os.listdir(Path(real) / "holders"))
        except FileNotFoundError:
            stacked = []
        except OSError as err:
            raise CannotLook(f"cannot list {real}/holders: {err.strerror or err}", path=real) from err
        if stacked:
            out.append(f"{name} holds {', '.join(stacked)} (md/dm built on it)")
    names = set(numbers.values())
    for mount in _mounts(proc_root):
        dev, source, point = mount
        name = numbers.get(dev) or (os.path.basename(source) if os.path.basename(source) in names else None)
        if name is not None:
            out.append(f"{name} is mounted on {point}")
    for line in _read(proc_root / "swaps").splitlines()[1:]:
        fields = line.split()
        if fields and os.path.basename(fields[0]) in names:
            out.append(f"{os.path.basename(fields[0])} is swap")
    return sorted(set(out))


def _mounts(proc_root: Path) -> list[tuple[str, str, str]]:
    """(st_dev "major:minor", source, mount point) of each mount this process or PID 1 sees."""
    out = []
    for owner in ("self", "1"):
        path = proc_root / owner / "mountinfo"
        try:
            text = path.read_text()
        except OSError as err:
            if owner == "self":
                raise CannotLook(f"cannot read {path}: {err.strerror or err}", path=str(path)) from err
            continue  # PID 1's mounts are a bonus: another namespace, when it can be read
        for line in text.splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2:
                out.append((fields[2], tail[1], fields[4]))
    return out


# -- network --------------------------------------------------------------------------------------
def _net_uses(sysfs: Sysfs, proc_root: Path, runner: Runner, here: str, timeout_s: float) -> list[str]:
    out = []
    for name, real in _below(sysfs.root / "class" / "net", here):
        text = _read(Path(real) / "flags").strip()
        try:
            up = int(text, 16) & IFF_UP
        except ValueError:
            raise CannotLook(f"{real}/flags reads {text!r}", path=real) from None
        try:
            uppers = sorted(e.removeprefix("upper_") for e in os.listdir(real) if e.startswith("upper_"))
        except OSError as err:
            raise CannotLook(f"cannot list {real}: {err.strerror or err}", path=real) from err
        if uppers:
            out.append(f"{name} carries {', '.join(uppers)} (stacked on it)")
        if up and (addresses := _addresses(runner, name, timeout_s)):
            out.append(f"{name} is up with {', '.join(addresses)}")
    return out


def _addresses(runner: Runner, name: str, timeout_s: float) -> list[str]:
    argv = ["ip", "-j", "addr", "show", "dev", name]
    result = runner.run(argv, timeout_s=timeout_s)
    if not result.ok or result.timed_out:
        why = (result.stderr or result.stdout).strip().splitlines()
        raise CannotLook(f"{' '.join(argv)} exited {result.returncode}" + (f": {why[0]}" if why else ""))
    try:
        links = json.loads(result.stdout or "[]")
        infos = [a for link in links for a in link.get("addr_info", [])]
    except (ValueError, AttributeError, TypeError) as err:
        raise CannotLook(f"{' '.join(argv)}: unreadable JSON ({err})") from None
    return [f"{a.get('local')}/{a.get('prefixlen')}" for a in infos
            if not (a.get("family") == "inet6" and a.get("scope") == "link")]
