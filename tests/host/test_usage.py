"""gpusoak.host.usage: what the node keeps on a function that is not a GPU, read from a sysfs and
procfs laid out as the kernel lays them out (built by hand: the simulator has no NVMe or NIC).

Layout: an NVMe namespace is /sys/devices/.../<bdf>/nvme/nvme0/nvme0n1 with its partitions below
it, linked from /sys/class/block (block/genhd.c, partitions/core.c); a NIC is .../<bdf>/net/<if>,
linked from /sys/class/net. Formats: mountinfo (fs/proc_namespace.c show_mountinfo), /proc/swaps
(mm/swapfile.c swap_show), ``ip -j addr`` (iproute2's JSON).
"""

import json
import os
from pathlib import Path

from gpusoak.host.commands import CommandResult
from gpusoak.host.sysfs import Sysfs
from gpusoak.host.usage import function_uses
from gpusoak.model import PciAddress

NVME, NIC = PciAddress.parse("0000:01:00.0"), PciAddress.parse("0000:02:00.0")
MOUNTINFO = ("22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
             "29 1 259:1 / /data rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw\n")
SWAPS = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


def _put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, path.parent), path)


class IpRunner:
    """Answers ``ip -j addr show dev IF`` as iproute2 does; anything else is not found."""

    def __init__(self, addresses):
        self.addresses = addresses
        self.calls = []

    def run(self, argv, *, timeout_s):
        argv = tuple(argv)
        self.calls.append(argv)
        if argv[:5] == ("ip", "-j", "addr", "show", "dev") and argv[5] in self.addresses:
            infos = [{"family": f, "local": a, "prefixlen": p, "scope": s} for f, a, p, s in self.addresses[argv[5]]]
            return CommandResult(argv, 0, json.dumps([{"ifname": argv[5], "addr_info": infos}]), "", 0.01)
        return CommandResult(argv, 127, "", f"{argv[0]}: not found", 0.01)


def node_tree(tmp_path, mounted=True, nic_up=True):
    """An NVMe (namespace nvme0n1, partitions p1 and p2) and a NIC (eth0) under one root port."""
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    port = sys_root / "devices" / "pci0000:00" / "0000:00:01.0"
    for bdf, vendor in ((NVME, "0x144d"), (NIC, "0x8086")):
        _put(port / str(bdf) / "vendor", vendor + "\n")
        _link(sys_root / "bus" / "pci" / "devices" / str(bdf), port / str(bdf))
    disk = port / str(NVME) / "nvme" / "nvme0" / "nvme0n1"
    for name, dev in (("nvme0n1", "259:0"), ("nvme0n1p1", "259:1"), ("nvme0n1p2", "259:2")):
        d = disk if name == "nvme0n1" else disk / name
        _put(d / "dev", dev + "\n")
        (d / "holders").mkdir()
        _link(sys_root / "class" / "block" / name, d)
    eth = port / str(NIC) / "net" / "eth0"
    _put(eth / "flags", "0x1003\n" if nic_up else "0x1002\n")  # IFF_UP|IFF_BROADCAST|IFF_MULTICAST
    _link(sys_root / "class" / "net" / "eth0", eth)
    _put(proc / "self" / "mountinfo", MOUNTINFO if mounted else MOUNTINFO.splitlines()[0] + "\n")
    _put(proc / "swaps", SWAPS)
    return Sysfs(sys_root), proc, disk


def test_a_mounted_partition_swap_and_an_md_member_are_uses_of_the_nvme(tmp_path):
    sysfs, proc, disk = node_tree(tmp_path)
    runner = IpRunner({})
    assert function_uses(sysfs, proc, runner, NVME).uses == ("nvme0n1p1 is mounted on /data",)
    _put(proc / "swaps", SWAPS + "/dev/nvme0n1p2                          partition\t8388604\t\t0\t\t-2\n")
    (disk / "holders" / "md0").mkdir()
    uses = function_uses(sysfs, proc, runner, NVME)
    assert set(uses.uses) == {"nvme0n1p1 is mounted on /data", "nvme0n1p2 is swap",
                              "nvme0n1 holds md0 (md/dm built on it)"} and uses.unreadable == ()
    assert runner.calls == []  # no network interface below the NVMe


def test_an_unmounted_nvme_is_free_and_unreadable_mounts_are_not(tmp_path):
    sysfs, proc, _ = node_tree(tmp_path, mounted=False)
    assert function_uses(sysfs, proc, IpRunner({}), NVME).uses == ()
    (proc / "self" / "mountinfo").unlink()
    uses = function_uses(sysfs, proc, IpRunner({}), NVME)
    assert uses.uses == () and "mountinfo" in uses.unreadable[0]


def test_a_nic_that_is_up_with_addresses_is_in_use(tmp_path):
    sysfs, proc, _ = node_tree(tmp_path)
    link_local = ("inet6", "fe80::1", 64, "link")
    runner = IpRunner({"eth0": [("inet", "10.0.0.2", 24, "global"), link_local]})
    assert function_uses(sysfs, proc, runner, NIC).uses == ("eth0 is up with 10.0.0.2/24",)
    # The kernel gives every interface that comes up a link-local address: that alone is no use.
    assert function_uses(sysfs, proc, IpRunner({"eth0": [link_local]}), NIC).uses == ()
    # ip missing: the addresses could not be read, so the check could not look.
    uses = function_uses(sysfs, proc, IpRunner({}), NIC)
    assert uses.uses == () and "ip -j addr show dev eth0 exited 127" in uses.unreadable[0]
    # Down: nothing to ask ip about.
    down, proc2, _ = node_tree(tmp_path / "down", nic_up=False)
    runner = IpRunner({})
    assert function_uses(down, proc2, runner, NIC).uses == () and runner.calls == []
