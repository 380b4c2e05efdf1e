"""gpusoak.host.procs: holders by st_rdev over a /proc tree laid out as the kernel lays it out, and
the kernel's device-number tables in the formats their printing functions use."""

import os
import stat as stat_mode
from typing import NamedTuple

import pytest

from gpusoak.errors import CannotLook
from gpusoak.host import procs
from gpusoak.model import PciAddress

GPU = PciAddress.parse("0000:18:00.0")


class St(NamedTuple):
    st_mode: int
    st_rdev: int


def _stat(numbers):
    """The stat seam: an fd link's target -> the character device it is (no mknod needed)."""
    def stat(path):
        target = os.readlink(path) if os.path.islink(path) else path
        if target in numbers:
            return St(stat_mode.S_IFCHR | 0o600, numbers[target])
        return os.stat(target)
    return stat


def _proc(tmp_path, fds):
    """/proc with one process per entry: pid -> the targets of its fds."""
    root = tmp_path / "proc"
    for pid, targets in fds.items():
        (root / str(pid) / "fd").mkdir(parents=True)
        for n, target in enumerate(targets, start=3):
            os.symlink(target, root / str(pid) / "fd" / str(n))
    return root


def test_a_renamed_node_in_a_container_is_found_by_its_device_number(tmp_path):
    # The container calls 195:0 /dev/gpu0; a regular file named /dev/nvidia0 is no device at all.
    regular = tmp_path / "nvidia0"
    regular.write_text("")
    root = _proc(tmp_path, {100: ["/dev/gpu0"], 200: [str(regular)], 300: ["/dev/nvidia1"]})
    stat = _stat({"/dev/gpu0": os.makedev(195, 0), "/dev/nvidia1": os.makedev(195, 1)})
    scan = procs.scan_holders({(195, 0): "/dev/nvidia0"}, root, stat)
    assert scan.holders == (procs.Holder(100, "/dev/gpu0", "/dev/nvidia0"),) and scan.unreadable == ()
    # Every minor of a major: all of nvidia-uvm's nodes, say.
    scan = procs.scan_holders({(195, procs.ANY_MINOR): "nvidia"}, root, stat)
    assert [h.pid for h in scan.holders] == [100, 300]


def test_a_proc_it_cannot_list_or_a_process_it_cannot_read_is_not_a_pass(tmp_path):
    with pytest.raises(CannotLook):
        procs.scan_holders({(195, 0): "x"}, tmp_path / "no-proc")
    root = _proc(tmp_path, {100: []})
    (root / "101").mkdir()
    (root / "101" / "fd").write_text("")  # listing it fails (ENOTDIR here; EACCES without root)
    scan = procs.scan_holders({(195, 0): "x"}, root, _stat({}))
    assert scan.holders == () and scan.unreadable == (str(root / "101" / "fd"),)


INFORMATION = ("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 160\nGPU UUID: \t GPU-5a1f00d0\n"
               "Video BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n"
               "DMA Mask: \t 0xfffffffffffff\nBus Location: \t 0000:18:00.0\nDevice Minor: \t 3\n"
               "GPU Firmware: \t 570.124.06\nGPU Excluded:\t No\n")


def test_the_minor_comes_from_the_drivers_procfs_as_nv_procfs_read_gpu_info_prints_it(tmp_path):
    info = tmp_path / "driver" / "nvidia" / "gpus" / "0000:18:00.0" / "information"
    assert procs.procfs_minor(tmp_path, GPU) == (None, f"{info}: No such file or directory")
    info.parent.mkdir(parents=True)
    info.write_text(INFORMATION)
    assert procs.procfs_minor(tmp_path, GPU) == (3, "")
    info.write_text(INFORMATION.replace("Device Minor: \t 3\n", ""))
    assert procs.procfs_minor(tmp_path, GPU)[0] is None


def test_majors_misc_minors_and_mig_minors_are_read_from_the_kernels_tables(tmp_path):
    (tmp_path / "devices").write_text("Character devices:\n  1 mem\n 10 misc\n195 nvidia\n195 nvidiactl\n"
                                      "234 nvidia-uvm\n237 nvidia-caps\n\nBlock devices:\n  9 md\n253 device-mapper\n")
    assert procs.char_majors(tmp_path) == {"mem": 1, "misc": 10, "nvidia": 195, "nvidiactl": 195,
                                           "nvidia-uvm": 234, "nvidia-caps": 237}
    assert procs.block_majors(tmp_path) == {9: "md", 253: "device-mapper"}
    (tmp_path / "misc").write_text("122 iommu\n196 vfio\n")
    assert procs.misc_minor(tmp_path, "iommu") == 122 and procs.misc_minor(tmp_path, "kvm") is None
    caps = tmp_path / "driver" / "nvidia-caps" / "mig-minors"
    caps.parent.mkdir(parents=True)
    caps.write_text("config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\ngpu1/gi0/access 138\n"
                    "gpu10/gi0/access 1353\n")
    assert procs.mig_minors(tmp_path, 0) == [3, 4] and procs.mig_minors(tmp_path, 1) == [138]
    with pytest.raises(CannotLook):
        procs.char_majors(tmp_path / "elsewhere")
