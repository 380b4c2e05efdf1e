"""The sysfs reader over a tree laid out like the kernel's, built by hand here (not by the simulator).

Layout and file formats: Linux 6.12 drivers/pci/pci-sysfs.c and Documentation/ABI/testing/sysfs-bus-pci,
as summarised in shared/reference/gpu-reset-reference.md section 3.
"""

import os
import threading

import pytest

from gpusoak.errors import AccessDenied, DeviceGone, Hung, SysfsError, WriteFailed
from gpusoak.host.sysfs import Sysfs, parse_aer_counters
from gpusoak.model import PciAddress

GPU = PciAddress.parse("0000:65:00.0")
AUDIO = PciAddress.parse("0000:65:00.1")
OLD_GPU = PciAddress.parse("0000:b3:00.0")
PORT = PciAddress.parse("0000:64:01.0")

AER_COR_612 = "RxErr 2\nBadTLP 0\nBadDLLP 1\nRollover 0\nTimeout 0\nNonFatalErr 0\nCorrIntErr 0\nHeaderOF 0\nTOTAL_ERR_COR 3\n"
AER_COR_419 = "Receiver Error 2\nBad TLP 0\nBad DLLP 0\nRELAY_NUM Rollover 0\nReplay Timer Timeout 0\nTOTAL_ERR_COR 2\n"


def _put(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(path, target):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, path.parent), path)


@pytest.fixture
def sys_root(tmp_path):
    root = tmp_path / "sys"
    port = root / "devices" / "pci0000:64" / "0000:64:01.0"
    gpu, audio = port / "0000:65:00.0", port / "0000:65:00.1"
    old = root / "devices" / "pci0000:b2" / "0000:b2:00.0" / "0000:b3:00.0"
    drivers = root / "bus" / "pci" / "drivers"
    files = {
        gpu: {"vendor": "0x10de\n", "device": "0x2330\n", "class": "0x030200\n", "reset_method": "flr bus\n",
              "reset": "", "power_state": "D0\n", "current_link_speed": "16.0 GT/s PCIe\n",
              "max_link_speed": "32.0 GT/s PCIe\n", "current_link_width": "16\n", "max_link_width": "16\n",
              "aer_dev_correctable": AER_COR_612, "driver_override": "(null)\n", "power/control": "on\n"},
        audio: {"vendor": "0x10de\n", "device": "0x22a3\n", "class": "0x040300\n"},
        port: {"vendor": "0x8086\n", "device": "0x352a\n", "class": "0x060400\n"},
        # An older kernel: no reset_method, no power_state, no AER statistics, no driver bound.
        old: {"vendor": "0x10de\n", "device": "0x1db6\n", "class": "0x030000\n",
              "current_link_speed": "8.0 GT/s PCIe\n", "current_link_width": "8\n",
              "aer_dev_correctable": AER_COR_419},
    }
    for d, attrs in files.items():
        for name, text in attrs.items():
            _put(d / name, text)
        _link(root / "bus" / "pci" / "devices" / d.name, d)
    _link(gpu / "driver", drivers / "nvidia")
    _link(audio / "driver", drivers / "snd_hda_intel")
    _link(port / "driver", drivers / "pcieport")
    for drv in ("nvidia", "snd_hda_intel", "pcieport"):
        (drivers / drv).mkdir(parents=True, exist_ok=True)
    group = root / "kernel" / "iommu_groups" / "17"
    group.mkdir(parents=True)
    _link(gpu / "iommu_group", group)
    return root


def test_enumerates_nvidia_display_functions_only(sys_root):
    sysfs = Sysfs(sys_root)
    assert sysfs.pci_devices() == sorted([GPU, AUDIO, PORT, OLD_GPU])
    assert sysfs.nvidia_gpus() == [GPU, OLD_GPU]  # the audio function and the bridge are not GPUs


def test_reads_a_modern_function(sys_root):
    fn = Sysfs(sys_root).function(GPU)
    assert fn.present and fn.vendor == 0x10DE and fn.device_id == 0x2330 and fn.pci_class == 0x030200
    assert fn.reset_methods == ("flr", "bus") and fn.can_reset
    assert fn.power_state == "D0" and fn.runtime_pm == "on"
    link = fn.link
    assert (link.current_speed, link.current_width, link.max_speed, link.max_width) == \
        ("16.0 GT/s PCIe", 16, "32.0 GT/s PCIe", 16)
    assert fn.driver == "nvidia" and fn.driver_override is None and fn.iommu_group == 17
    aer = fn.aer("correctable")
    assert aer.total == 3 and aer.counts["RxErr"] == 2 and aer.counts["BadDLLP"] == 1


def test_missing_files_are_na_not_errors(sys_root):
    fn = Sysfs(sys_root).function(OLD_GPU)
    assert fn.reset_methods is None and not fn.can_reset
    assert fn.power_state is None and fn.driver is None and fn.iommu_group is None
    assert fn.aer("fatal") is None
    assert fn.link.max_speed is None and fn.link.current_width == 8


def test_aer_names_of_older_kernels():
    counters = parse_aer_counters(AER_COR_419)
    assert counters.total == 2 and counters.counts["Receiver Error"] == 2


def test_unexpected_values_are_errors_that_say_where(sys_root):
    (sys_root / "bus/pci/devices/0000:65:00.0/current_link_width").write_text("wide\n")
    with pytest.raises(SysfsError) as err:
        _ = Sysfs(sys_root).function(GPU).link
    assert "current_link_width" in str(err.value)
    (sys_root / "bus/pci/devices/0000:65:00.0/aer_dev_correctable").write_text("RxErr 1\n")
    with pytest.raises(SysfsError):
        Sysfs(sys_root).function(GPU).aer("correctable")


def test_topology(sys_root):
    sysfs = Sysfs(sys_root)
    fn = sysfs.function(GPU)
    assert fn.upstream_port == PORT
    assert fn.behind_upstream_port() == [GPU, AUDIO]  # the audio function shares the reset domain
    assert fn.sibling_functions() == [AUDIO]
    assert sysfs.function(PORT).upstream_port is None  # a root port hangs off the root bus


def test_vanished_function(sys_root):
    fn = Sysfs(sys_root).function(PciAddress.parse("0000:66:00.0"))
    assert not fn.present
    with pytest.raises(DeviceGone):
        fn.require_present()
    with pytest.raises(DeviceGone):
        _ = fn.upstream_port


def test_write_goes_through_the_one_seam(sys_root):
    seen = []
    sysfs = Sysfs(sys_root, writer=lambda path, data: seen.append((path.name, data)))
    sysfs.write(sysfs.function(GPU).path / "reset", "1", timeout_s=5, what="reset")
    assert seen == [("reset", "1")]


def test_write_errors_are_translated(sys_root):
    def refuse(path, data):
        raise PermissionError(13, "Permission denied")

    def enotty(path, data):
        raise OSError(25, "Inappropriate ioctl for device")

    path = Sysfs(sys_root).function(GPU).path / "reset"
    with pytest.raises(AccessDenied):
        Sysfs(sys_root, writer=refuse).write(path, "1", timeout_s=5, what="reset")
    with pytest.raises(WriteFailed) as err:
        Sysfs(sys_root, writer=enotty).write(path, "1", timeout_s=5, what="reset")
    assert err.value.errno == "ENOTTY" and "reset" in str(err.value)


def test_a_blocked_write_becomes_hung_in_bounded_time(sys_root):
    release = threading.Event()

    def block(path, data):
        release.wait(10)

    sysfs = Sysfs(sys_root, writer=block)
    with pytest.raises(Hung) as err:
        sysfs.write(sysfs.function(GPU).path / "reset", "1", timeout_s=0.2, what="reset")
    release.set()
    assert "0.2 s" in str(err.value) and err.value.path.endswith("reset")


def test_real_writer_writes_the_file(sys_root):
    sysfs = Sysfs(sys_root)
    path = sysfs.function(GPU).path / "reset"  # write-only attribute, empty in the tree
    sysfs.write(path, "1", timeout_s=5, what="reset")
    assert path.read_text() == "1"
