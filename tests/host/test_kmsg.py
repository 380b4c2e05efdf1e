"""/dev/kmsg records and the events in them.

Record lines: Documentation/ABI/testing/dev-kmsg (Linux) gives the record layout and its example
records; message texts are the kernel's and NVIDIA's formats from
shared/reference/gpu-reset-reference.md (sections 1.1 and 3.1).
"""

import pytest

from gpusoak.host.kmsg import KmsgFile, events, parse_records

DEV_KMSG_EXAMPLE = """\
7,160,424069,-;pci_root PNP0A03:00: host bridge window [io  0x0000-0x0cf7] (ignored)
 SUBSYSTEM=acpi
 DEVICE=+acpi:PNP0A03:00
6,339,5140900,-;NET: Registered protocol family 10
30,340,5690716,-;udevd[80]: starting version 181
"""


def test_records_with_continuation_lines():
    recs = list(parse_records(DEV_KMSG_EXAMPLE.splitlines()))
    assert [r.seq for r in recs] == [160, 339, 340]
    first = recs[0]
    assert first.level == 7 and first.facility == 0 and first.usec == 424069
    assert first.message == "pci_root PNP0A03:00: host bridge window [io  0x0000-0x0cf7] (ignored)"
    assert first.fields == (("SUBSYSTEM", "acpi"), ("DEVICE", "+acpi:PNP0A03:00"))
    assert recs[2].facility == 3 and recs[2].level == 6  # 30 = daemon facility, info
    assert [r.line for r in recs] == [1, 4, 5]


def test_escapes_and_extra_header_fields():
    # Non-printable bytes are escaped as \xNN; newer kernels append fields after the flags.
    recs = list(parse_records(["6,12,34,-,caller=T1;line one\\x0aline two"]))
    assert recs[0].message == "line one\nline two"


def test_damaged_lines_lose_only_themselves():
    text = ["4,1,10,-;first", "garbage without header", "", "6,2,", "4,3,30,-;third"]
    assert [r.message for r in parse_records(text)] == ["first", "third"]


def _ev(message, device=None):
    lines = [f"4,7,1000000,-;{message}"] + ([f" DEVICE=+pci:{device}"] if device else [])
    return events(parse_records(lines))


@pytest.mark.parametrize("message, pci, xid", [
    ("NVRM: Xid (PCI:0000:65:00): 79, pid=1234, name=python, GPU has fallen off the bus.", "0000:65:00", 79),
    ("NVRM: Xid (PCI:0000:65:00): 79, GPU has fallen off the bus.", "0000:65:00", 79),
    ("NVRM: Xid (PCI:0000:3b:00): 13, pid='<unknown>', name=<unknown>, Graphics Exception", "0000:3b:00", 13),
    ("NVRM: Xid (PCI:0000:65:00 GPU-I:05 GPU-CI:01): 31, pid=7, name=a, MMU Fault", "0000:65:00", 31),
    ("NVRM: Xid (0000:03:00): 14, Channel 00000001", "0000:03:00", 14),
])
def test_xid_lines(message, pci, xid):
    (e,) = _ev(message)
    assert (e.kind, e.pci, e.xid) == ("xid", pci, xid)


def test_fallen_off_the_bus_companion_line():
    (e,) = _ev("NVRM: GPU 0000:65:00.0: GPU has fallen off the bus.")
    assert (e.kind, e.pci) == ("fell_off_bus", "0000:65:00.0")


@pytest.mark.parametrize("message, pci, severity", [
    ("pcieport 0000:64:01.0: AER: Correctable error message received from 0000:65:00.0", "0000:65:00.0", "corrected"),
    ("pcieport 0000:64:01.0: AER: Multiple Uncorrectable (Fatal) error message received from 0000:65:00.0",
     "0000:65:00.0", "fatal"),
    ("pcieport 0000:64:01.0: AER: Uncorrected (Non-Fatal) error received: 0000:65:00.0", "0000:65:00.0", "nonfatal"),
    ("nvidia 0000:65:00.0: PCIe Bus Error: severity=Uncorrectable (Non-Fatal), type=Transaction Layer, (Requester ID)",
     "0000:65:00.0", "nonfatal"),
])
def test_aer_in_both_wordings(message, pci, severity):
    (e,) = _ev(message)
    assert (e.kind, e.pci, e.severity) == ("aer", pci, severity)


def test_flr_giving_up_is_an_event_and_waiting_is_not():
    (e,) = _ev("nvidia 0000:65:00.0: not ready 65535ms after FLR; giving up")
    assert (e.kind, e.pci) == ("flr_not_ready", "0000:65:00.0")
    assert _ev("nvidia 0000:65:00.0: not ready 1023ms after FLR; waiting") == []
    (b,) = _ev("pci 0000:65:00.0: not ready 65535ms after bus reset; giving up")
    assert b.kind == "reset_failed"


def test_d3cold_attributed_by_device_field_when_prefix_lacks_it():
    (e,) = _ev("Unable to change power state from D3cold to D0, device inaccessible", device="0000:65:00.0")
    assert (e.kind, e.pci) == ("d3cold", "0000:65:00.0")


def test_other_lines_are_not_events():
    assert _ev("NET: Registered protocol family 10") == []


def test_cursor_counts_only_later_records(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text("4,1,10,-;NVRM: Xid (PCI:0000:65:00): 79, GPU has fallen off the bus.\n")
    source = KmsgFile(log)
    cursor = source.cursor()
    assert cursor == 1 and source.records_since(cursor) == []
    with open(log, "a") as f:
        f.write("4,2,20,-;nvidia 0000:65:00.0: not ready 65535ms after FLR; giving up\n SUBSYSTEM=pci\n")
    later = source.records_since(cursor)
    assert [r.seq for r in later] == [2]
    assert [e.kind for e in events(later)] == ["flr_not_ready"]


def test_missing_log_file_is_empty(tmp_path):
    assert KmsgFile(tmp_path / "none").cursor() == -1


def test_a_user_space_record_is_never_a_kernel_event():
    # facility 1 (user): what devkmsg_write records for any write to /dev/kmsg, so an Xid line a
    # tool injects or replays there is not the driver's.
    xid = "NVRM: Xid (PCI:0000:65:00): 79, pid=1234, name=python, GPU has fallen off the bus."
    assert events(parse_records([f"12,7,1000000,-;{xid}"])) == []
    assert len(events(parse_records([f"4,8,1000000,-;{xid}"]))) == 1


def test_markers_through_the_simulated_dev_kmsg(tmp_path):
    from gpusoak.sim import open_sim_node

    s = open_sim_node()
    try:
        log = s.node.kmsg
        cursor = log.cursor()
        for n in range(12):  # each mark opens /dev/kmsg anew: the per-open rate limit never bites
            assert log.mark(f"gpusoak: cycle {n} flr 0000:18:00.0 begin\nsecond line")
        recs = log.records_since(cursor)
        assert len(recs) == 12 and {(r.facility, r.level) for r in recs} == {(1, 6)}
        assert recs[0].message == "gpusoak: cycle 0 flr 0000:18:00.0 begin second line"
        assert events(recs) == []
        # One descriptor kept open would lose writes past the burst, and the write still succeeds.
        with s.kernel.devkmsg_open() as f:
            assert all(f.write(b"<14>gpusoak: x\n") == 15 for _ in range(11))
        assert len(log.records_since(recs[-1].seq)) == 10
    finally:
        s.node.close()


def test_a_marker_that_cannot_be_written_is_false_never_an_error(tmp_path):
    from gpusoak.host.kmsg import DevKmsg

    assert KmsgFile(tmp_path / "dump").mark("gpusoak: x") is False  # a saved dump takes no marker
    assert DevKmsg(tmp_path / "missing" / "kmsg").mark("gpusoak: x") is False
    target = tmp_path / "kmsg"
    target.write_bytes(b"")
    assert DevKmsg(target).mark("gpusoak: cycle 1 flr 0000:18:00.0 begin") is True
    assert target.read_bytes() == b"<14>gpusoak: cycle 1 flr 0000:18:00.0 begin\n"  # one record, one write
