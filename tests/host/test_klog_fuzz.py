"""The parser takes untrusted input: it never raises, and its cost grows linearly with the input."""

import io
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusoak.host import commands
from gpusoak.host.klog import KINDS, TRIGGERS, parse_lines, scan, scan_path

# Fragments of real lines, so the fuzzer reaches the parsing code behind the triggers.
FRAGMENTS = [t.decode() if isinstance(t, bytes) else t.pattern.decode() for t in TRIGGERS] + [
    "NVRM: ", "AER: ", "fallen off the bus", "RmInitAdapter failed", "Failed to enable MSI-X", "error",
    "[ 12.5] ", "NVRM: Xid (PCI:0000:65:00): ", "79, ", "pid=1, name=x, ", "0000:65:00.0", ": ", "\n", " ",
    "Nov 21 21:52:59 h kernel: ", "4,1,2,-;", " DEVICE=+pci:", "severity=", "Uncorrectable (Fatal)",
    "received from ", "; giving up", "after FLR", "[Sat Nov 21 21:52:59 2026] ", "\\x0a", "GPU-I:01 ", ")",
]

text_lines = st.lists(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)),
                      max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text_lines)
def test_never_raises_on_text(lines):
    physical = "\n".join(lines).count("\n") + 1
    for e in parse_lines(lines):
        assert e.kind in KINDS and 1 <= e.line <= physical


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=300))
def test_never_raises_on_bytes_at_any_block_size(data, block):
    assert [e.line for e in scan(io.BytesIO(data), block_size=block)] == \
        [e.line for e in scan(io.BytesIO(data))]


def _cost(line: str, copies: int) -> float:
    data = ((line + "\n") * copies).encode()
    start = time.process_time()
    for _ in scan(io.BytesIO(data)):
        pass
    return time.process_time() - start


ADVERSARIAL = {
    "wall-clock brackets": lambda k: "[" + "11:11:11 " * k + "Xid (",
    "repeated triggers": lambda k: "AER: Xid (" * k,
    "nested prefixes": lambda k: "Nov 21 11:11:11 h kernel: " * k + "AER: ",
    "long address runs": lambda k: "Xid (PCI:" + "0000:65:00 " * k,
    "giving up wording": lambda k: "not ready 1ms after " + "FLR " * k,
}


def test_cost_is_linear_in_line_length_and_count():
    # Linear growth gives a ratio near 8 for 8x the input; quadratic gives near 64.
    for name, make in ADVERSARIAL.items():
        small, large = make(300), make(2400)
        ratio_len = (_cost(large, 20) + 1e-3) / (_cost(small, 20) + 1e-3)
        ratio_count = (_cost(small, 800) + 1e-3) / (_cost(small, 100) + 1e-3)
        assert ratio_len < 24, f"{name}: 8x longer lines cost {ratio_len:.1f}x"
        assert ratio_count < 24, f"{name}: 8x more lines cost {ratio_count:.1f}x"


# -- the grep prefilter gives the same events as the in-process scan --------------------------------
GREP = commands.gnu_grep()
needs_grep = pytest.mark.skipif(GREP is None, reason="GNU grep is not installed here")

# Lines that exercise what the grep path must reproduce: continuation fields (also on a line that
# is itself a hit), records spread over lines, NUL bytes and invalid UTF-8, CRLF.
KMSG_FRAGMENTS = FRAGMENTS + [" SUBSYSTEM=pci", " DEVICE=+pci:0000:65:00.0", " DEVICE=+pci:0000:66:00.0 Xid (",
                              "\x00", "\udcff", "\r", "6,901,1000001,-;",
                              # whole messages of every kind, so events (not only triggers) come out
                              "Unable to change power state from D3cold to D0, device inaccessible",
                              "nvidia 0000:65:00.0: not ready 65535ms after FLR; giving up",
                              "NVRM: GPU 0000:65:00.0: RmInitAdapter failed! (0x22:0x56:742)",
                              "NVRM: GPU 0000:65:00.0: Failed to enable MSI-X.", "pciehp: Slot(1): Link Down",
                              "pcieport 0000:64:01.0: AER: Correctable error message received from 0000:65:00.0",
                              "nvidia 0000:65:00.0: PCIe Bus Error: severity=Uncorrectable (Fatal), type=Transaction Layer",
                              "nvidia 0000:65:00.0: AER: subordinate device reset failed",
                              "timed out waiting for pending transaction; performing function level reset anyway",
                              "NVRM: GPU at PCI:0000:65:00: GPU has fallen off the bus."]
mixed_lines = st.lists(st.lists(st.sampled_from(KMSG_FRAGMENTS), max_size=8).map("".join), max_size=60)


@needs_grep
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mixed_lines)
def test_grep_prefilter_gives_the_same_events_as_the_scan(tmp_path, lines):
    data = "\n".join(lines).encode("utf-8", errors="surrogateescape")
    log = tmp_path / "fuzz.log"
    log.write_bytes(data)
    assert list(scan_path(str(log))) == list(scan(io.BytesIO(data)))


@needs_grep
def test_grep_prefilter_on_a_mixed_log_and_from_a_descriptor(tmp_path):
    lines = [
        "4,900,1000000,-;Unable to change power state from D3cold to D0, device inaccessible",  # [dev-kmsg]
        " SUBSYSTEM=pci",
        " DEVICE=+pci:0000:65:00.0",
        "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
        "               NVRM: (PCI ID: 10de:26b5) installed in this system has",
        "               NVRM: fallen off the bus and is not responding to commands.",
        "[ 1851.000001] NVRM: Xid (PCI:0000:65:00): 48, pid=2, name=b, An uncorrectable double bit error",
    ] * 500
    log = tmp_path / "mixed.log"
    log.write_text("\n".join(lines) + "\n")
    expected = list(scan(io.BytesIO(log.read_bytes())))
    assert len(expected) == 1500 and expected[0].pci == "0000:65:00.0"
    assert list(scan_path(str(log))) == expected
    with open(log, "rb") as f:
        assert list(scan_path(f.fileno())) == expected


def test_without_gnu_grep_the_scan_runs_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "gnu_grep", lambda: None)
    log = tmp_path / "x.log"
    log.write_text("[ 1.0] NVRM: Xid (PCI:0000:65:00): 79, pid=1, name=x, GPU has fallen off the bus.\n")
    (event,) = scan_path(str(log))
    assert (event.kind, event.xid, event.line) == ("xid", 79, 1)


def test_a_failing_filter_is_an_error_not_an_empty_log(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("Xid (\n")
    fake = tmp_path / "grep"
    fake.write_text("#!/bin/sh\necho 'grep: read error' >&2\nexit 2\n")
    fake.chmod(0o755)
    with pytest.raises(OSError, match="read error"):
        list(scan_path(str(log), grep=str(fake)))
