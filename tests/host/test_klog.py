"""The kernel-log parser across the formats seen in the field.

Where each line comes from:
  [ref 1.1]  shared/reference/gpu-reset-reference.md section 1.1 (krcReportXid formats across drivers)
  [ref 3.1]  the same, section 3.1 (Linux 6.12 drivers/pci messages), section 5 (NVRM messages)
  [NVSentinel#155]  github.com/NVIDIA/NVSentinel/issues/155: the 3-line "fallen off the bus" dmesg record
  [Bumblebee#554]   github.com/Bumblebee-Project/Bumblebee/issues/554: an old driver's "GPU at ... has fallen off the bus"
  [GSConnect#1052]  github.com/GSConnect/gnome-shell-extension-gsconnect/issues/1052: journalctl, Russian month, no host
  [pop#751]         github.com/pop-os/pop/issues/751: AER "Multiple" with the port and the device both reporting
  [rpi-pcie#64]     github.com/geerlingguy/raspberry-pi-pcie-devices/issues/64: older AER wording with id=
  [dev-kmsg]        Linux Documentation/ABI/testing/dev-kmsg record format
"""

import io

import pytest

from gpusoak.host.klog import parse_lines, scan, strip_prefix

XID79 = "NVRM: Xid (PCI:0000:65:00): 79, pid=1234, name=python, GPU has fallen off the bus."  # [ref 1.1]


@pytest.mark.parametrize("line, stamp", [
    (f"[ 1234.567890] {XID79}", "1234.567890"),  # dmesg
    (f"[Sat Nov 21 21:52:59 2026] {XID79}", "Sat Nov 21 21:52:59 2026"),  # dmesg -T, C locale
    (f"[Sa Nov 21 21:52:59 2026] {XID79}", "Sa Nov 21 21:52:59 2026"),  # dmesg -T, de_DE
    (f"[sam. nov. 21 21:52:59 2026] {XID79}", "sam. nov. 21 21:52:59 2026"),  # dmesg -T, fr_FR
    (f"[ 1234.567890 <    0.000412>] {XID79}", "1234.567890"),  # dmesg -d
    (f"kern  :err   : [ 1234.567890] {XID79}", "1234.567890"),  # dmesg -x
    (f"Nov 21 21:52:59 gpu-node-7 kernel: {XID79}", "Nov 21 21:52:59"),  # journalctl short
    (f"фев 12 00:48:02 kernel: {XID79}", "фев 12 00:48:02"),  # journalctl, no host [GSConnect#1052]
    (f"[ 1234.567890] gpu-node-7 kernel: {XID79}", "1234.567890"),  # journalctl -o short-monotonic
    (f"2026-11-21T21:52:59+0000 gpu-node-7 kernel: {XID79}", "2026-11-21T21:52:59+0000"),  # short-iso
    (f"Nov 21 21:52:59 gpu-node-7 kernel: [ 1234.567890] {XID79}", "1234.567890"),  # syslog with dmesg stamp
    (f"172.20.0.2: kern: warning: [2026-11-21T21:52:59.123456Z]: {XID79}", "2026-11-21T21:52:59.123456Z"),  # shipper
    (f"4,1234,1234567890,-;{XID79}", "1234567890"),  # raw /dev/kmsg [dev-kmsg]
    (XID79, None),  # bare
    (f"   {XID79}", None),  # bare, indented
])
def test_every_prefix_yields_the_same_event(line, stamp):
    assert strip_prefix(line).message == XID79
    (e,) = parse_lines(["some other line", line])
    assert (e.kind, e.pci, e.xid, e.action, e.line, e.stamp) == ("xid", "0000:65:00", 79, "RESTART_BM", 2, stamp)


@pytest.mark.parametrize("message, pci, xid", [
    ("NVRM: Xid (PCI:0000:65:00): 79, GPU has fallen off the bus.", "0000:65:00", 79),  # >=570.86.15 [ref 1.1]
    ("NVRM: Xid (PCI:0000:3b:00): 13, pid='<unknown>', name=<unknown>, Graphics Exception", "0000:3b:00", 13),  # <=565
    ("NVRM: Xid (PCI:0000:65:00 GPU-I:05): 31, pid=7, name=a, MMU Fault", "0000:65:00", 31),  # MIG [ref 1.1]
    ("NVRM: Xid (PCI:0000:65:00 GPU-I:05 GPU-CI:01): 43, pid=7, name=a, Ch 00000008", "0000:65:00", 43),
    ("NVRM: Xid (PCI:0001:a1:00): 48, pid=2, name=b, An uncorrectable double bit error", "0001:a1:00", 48),
    ("NVRM: Xid (0000:03:00): 14, Channel 00000001", "0000:03:00", 14),  # legacy form [ref 1.1]
    ("NVRM: Xid (PCI:0000:65:00): 45, pid=9, name=c, Ch 00000010 caused by previous Xid 79", "0000:65:00", 45),
    ("NVRM: Xid (PCI:0000:65:00): 119, pid=9, name=c, Timeout after 6s of waiting for RPC response from GPU0 GSP! "
     "Expected function 76 (GSP_RM_CONTROL) (0x20800a4c 0x4).", "0000:65:00", 119),  # [ref 1.1]
    ("NVRM: Xid (PCI:0000:65:00): 119, pid=9, name=c, Timeout waiting for RPC from GSP0! Expected function 76 "
     "(GSP_RM_CONTROL) (0x20800a4c 0x4).", "0000:65:00", 119),
    ("nvidia_dev_xid: Xid (PCI:0000:65:00.0): 79, GPU has fallen off the bus.", "0000:65:00.0", 79),  # tracepoint
])
def test_xid_variants(message, pci, xid):
    (e,) = parse_lines([message])
    assert (e.kind, e.pci, e.xid) == ("xid", pci, xid)


def test_sxid_is_an_nvswitch_event_not_a_gpu_xid():
    assert parse_lines(["nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress"]) == []


def test_three_line_fallen_off_the_bus_is_one_event_at_its_first_line():
    lines = [  # [NVSentinel#155]: continuation lines carry no time stamp in dmesg
        "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
        "               NVRM: (PCI ID: 10de:26b5) installed in this system has",
        "               NVRM: fallen off the bus and is not responding to commands.",
        "[ 1843.439662] NVRM: The NVIDIA probe routine failed for 1 device(s).",
    ]
    (e,) = parse_lines(lines)
    assert (e.kind, e.pci, e.line, e.stamp) == ("fell_off_bus", "0000:b3:00.0", 1, "1843.308145")
    assert e.text.splitlines()[-1].endswith("not responding to commands.") and len(e.text.splitlines()) == 3


def test_syslog_split_record_groups_too():
    lines = ["Nov 21 21:52:59 n1 kernel: NVRM: The NVIDIA GPU 0000:b3:00.0",
             "Nov 21 21:52:59 n1 kernel: NVRM: (PCI ID: 10de:26b5) installed in this system has",
             "Nov 21 21:52:59 n1 kernel: NVRM: fallen off the bus and is not responding to commands."]
    (e,) = parse_lines(lines)
    assert (e.kind, e.pci, e.line) == ("fell_off_bus", "0000:b3:00.0", 1)


@pytest.mark.parametrize("line, pci", [
    ("[ 4567.1] NVRM: GPU 0000:65:00.0: GPU has fallen off the bus.", "0000:65:00.0"),  # [ref 1.1] companion
    ("[   49.261458] NVRM: GPU at 0000:01:00.0 has fallen off the bus.", "0000:01:00.0"),  # [Bumblebee#554]
])
def test_other_fallen_off_forms(line, pci):
    (e,) = parse_lines([line])
    assert (e.kind, e.pci) == ("fell_off_bus", pci)


def test_aer_record_is_one_event_per_agent():
    lines = [  # 6.x wording [ref 3.1]
        "[  10.1] pcieport 0000:64:01.0: AER: Uncorrectable (Non-Fatal) error message received from 0000:65:00.0",
        "[  10.1] nvidia 0000:65:00.0: PCIe Bus Error: severity=Uncorrectable (Non-Fatal), type=Transaction Layer, (Requester ID)",
        "[  10.1] nvidia 0000:65:00.0:   device [10de:2330] error status/mask=00004000/00000000",
        "[  10.1] nvidia 0000:65:00.0:    [14] CmpltTO",
        "[  10.1] nvidia 0000:65:00.0: AER: can't recover (no error_detected callback)",
    ]
    (e,) = parse_lines(lines)
    assert (e.kind, e.pci, e.severity, e.line) == ("aer", "0000:65:00.0", "nonfatal", 1)


def test_aer_multiple_with_port_and_device():
    lines = [  # [pop#751]
        " pcieport 0000:00:1d.0: AER: Multiple Corrected error received: 0000:03:00.0",
        " pcieport 0000:00:1d.0: AER: PCIe Bus Error: severity=Corrected, type=Physical Layer, (Receiver ID)",
        " pcieport 0000:00:1d.0: AER: device [8086:a330] error status/mask=00000001/00002000",
        " pcieport 0000:00:1d.0: AER: [ 0] RxErr",
        " nvme 0000:03:00.0: AER: PCIe Bus Error: severity=Corrected, type=Physical Layer, (Receiver ID)",
        " nvme 0000:03:00.0: AER: device [144d:a808] error status/mask=00000001/0000e000",
    ]
    events = parse_lines(lines)
    assert [(e.pci, e.severity, e.line) for e in events] == [("0000:03:00.0", "corrected", 1),
                                                             ("0000:00:1d.0", "corrected", 2)]


@pytest.mark.parametrize("line, pci, severity", [
    ("pcieport 0000:00:1c.5: AER: Corrected error received: 0000:00:1c.5", "0000:00:1c.5", "corrected"),  # [GSConnect#1052]
    ("pcieport 0000:00:1d.0: AER: Multiple Corrected error received: id=00e8", "0000:00:1d.0", "corrected"),  # [rpi-pcie#64]
    ("pcieport 0000:00:1d.0: PCIe Bus Error: severity=Corrected, type=Physical Layer, id=00e8(Receiver ID)",
     "0000:00:1d.0", "corrected"),  # [rpi-pcie#64]
    ("pcieport 0000:64:01.0: AER: Uncorrected (Fatal) error received: 0000:65:00.0", "0000:65:00.0", "fatal"),
    ("pcieport 0000:64:01.0: AER: Uncorrectable (Fatal) error message received from 0000:65:00.0", "0000:65:00.0", "fatal"),
    ("pcieport 0000:64:01.0: AER: Correctable error message received from 0000:65:00.0", "0000:65:00.0", "corrected"),
])
def test_aer_wordings(line, pci, severity):
    (e,) = parse_lines([line])
    assert (e.kind, e.pci, e.severity) == ("aer", pci, severity)


@pytest.mark.parametrize("line, kind, pci", [  # [ref 3.1] and [ref 5]
    ("nvidia 0000:65:00.0: not ready 65535ms after FLR; giving up", "flr_not_ready", "0000:65:00.0"),
    ("pci 0000:65:00.0: not ready 65535ms after AF_FLR; giving up", "flr_not_ready", "0000:65:00.0"),
    ("pci 0000:65:00.0: not ready 65535ms after bus reset; giving up", "reset_failed", "0000:65:00.0"),
    ("pcieport 0000:64:01.0: AER: subordinate device reset failed", "reset_failed", "0000:64:01.0"),
    ("nvidia 0000:65:00.0: timed out waiting for pending transaction; performing function level reset anyway",
     "flr_failed", "0000:65:00.0"),
    ("nvidia 0000:65:00.0: Unable to change power state from D3cold to D0, device inaccessible", "d3cold", "0000:65:00.0"),
    ("NVRM: GPU 0000:65:00.0: RmInitAdapter failed! (0x22:0x56:742)", "rminit_failed", "0000:65:00.0"),
    ("NVRM: GPU 0000:65:00.0: rm_init_adapter failed, device minor number 3", "rminit_failed", "0000:65:00.0"),
    ("NVRM: GPU 0000:65:00.0: Failed to enable MSI-X.", "msix_failed", "0000:65:00.0"),
    ("NVRM: GPU 0000:65:00.0: Failed to enable MSI; falling back to PCIe virtual-wire interrupts.", "msix_failed", "0000:65:00.0"),
    ("pcieport 0000:64:01.0: pciehp: Slot(12): Link Down", "link_down", "0000:64:01.0"),
])
def test_reset_power_and_driver_failures(line, kind, pci):
    (e,) = parse_lines([f"[  77.000001] {line}"])
    assert (e.kind, e.pci) == (kind, pci)


def test_waiting_is_progress_not_an_event():
    assert parse_lines(["nvidia 0000:65:00.0: not ready 1023ms after FLR; waiting"]) == []


def test_raw_kmsg_with_continuation_and_escapes():
    lines = [  # [dev-kmsg]
        "4,900,1000000,-;Unable to change power state from D3cold to D0, device inaccessible",
        " SUBSYSTEM=pci",
        " DEVICE=+pci:0000:65:00.0",
        "6,901,1000001,-;note\\x0aNVRM: Xid (PCI:0000:66:00): 79, GPU has fallen off the bus.",
    ]
    d3, xid = parse_lines(lines)
    assert (d3.kind, d3.pci, d3.line) == ("d3cold", "0000:65:00.0", 1)
    assert (xid.kind, xid.pci, xid.line) == ("xid", "0000:66:00", 4)


def test_noise_is_tolerated():
    lines = ["", "...", "[  1.0] Call Trace:", "[  1.0]  <TASK>", "[  1.0]  dump_stack_lvl+0x48/0x70",
             "[  1.0] NVRM: Xid (PCI:0000:65:0", "NVRM: Xid (", "AER: ", "[ 2.0] e1000e: eth0 NIC Link is Up",
             "\x00\xff garbage", XID79]
    (e,) = parse_lines(lines)
    assert e.line == len(lines)


def test_lines_across_block_boundaries_keep_their_numbers():
    lines = [f"[ {i}.0] noise line {i}" for i in range(5000)]
    lines[1234] = "[ 1234.0] NVRM: The NVIDIA GPU 0000:b3:00.0"
    lines[1235] = "[ 1234.0] NVRM: (PCI ID: 10de:26b5) installed in this system has"
    lines[1236] = "[ 1234.0] NVRM: fallen off the bus and is not responding to commands."
    lines[4000] = XID79
    data = ("\n".join(lines) + "\n").encode()
    for block in (64, 100, 997, 1 << 20):
        events = list(scan(io.BytesIO(data), block_size=block))
        assert [(e.kind, e.line) for e in events] == [("fell_off_bus", 1235), ("xid", 4001)], block


@pytest.mark.parametrize("line", [
    # A user's write to /dev/kmsg is recorded with facility user (devkmsg_write enforces LOG_USER),
    # so a replayed or injected Xid line is not the driver's: 12 = user, warning.
    f"12,77,1234567890,-;{XID79}",
    f"user  :warn  : [ 1234.567890] {XID79}",  # the same record through dmesg -x
])
def test_a_user_space_record_is_never_a_kernel_event(line):
    assert parse_lines([line]) == []


def test_gpusoak_cycle_markers_are_not_events():
    lines = ["14,80,1234567890,-;gpusoak: cycle 3 flr 0000:65:00.0 begin",
             "[ 1234.567890] gpusoak: cycle 3 flr 0000:65:00.0 end",
             "[ 1234.567891] gpusoak: cycle 4 module_reload node begin"]
    assert parse_lines(lines) == []
