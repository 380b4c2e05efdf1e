"""The kernel-log parser: every shape operators have logs in, and the events in them.

Formats (shared/reference/gpu-reset-reference.md sections 1.1, 3.1, 5): dmesg (monotonic ``[ 12.3]``,
``-T`` wall clock in any locale, ``-d`` deltas, ``-x`` facility:level), journalctl short (with and
without host), short-monotonic and short-iso, syslog lines that embed a monotonic stamp, raw
/dev/kmsg records (with continuation lines and ``\\xNN`` escapes), shipper prefixes such as
``HOST: kern: warning: [ISO]:``, and bare lines.

Speed: a log is mostly noise, so the scanner looks for a few literal trigger strings with
``bytes.find`` (memchr speed) and fully parses only the lines that hold one. Memory stays bounded:
input is read in blocks and only a few lines are carried from one block to the next.

Records spread over several lines (NVRM's "fallen off the bus" at init, AER's arrival line and its
detail lines) become one event that points at the record's first line (``Grouper``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from gpusoak.host import xid as xid_catalog
from gpusoak.model import KernelEvent, normalise_pci

KINDS = ("xid", "aer", "flr_not_ready", "flr_failed", "reset_failed", "fell_off_bus", "msix_failed",
         "rminit_failed", "d3cold", "link_down")

# A line can be an event only if it holds one of these triggers. Each costs one sweep of the log
# (bytes.find, or a regex whose literal prefix keeps the sweep in C), so the set is small: NVRM's
# own lines (fall-off, RmInitAdapter, MSI/MSI-X) share "NVRM: "; drivers/pci/pcie/{aer,err}.c
# prefix theirs with "AER: " (recovery and subordinate-reset failures included); older kernels
# print the AER detail line without it, hence "Bus Error". The two broad triggers carry the rest of
# what an event line must hold, so routine chatter ("NVRM: loading ...", "AER: enabled with IRQ")
# is passed over without leaving C. Their look-ahead is bounded (a record is about 1 KiB) so that
# a line packed with triggers costs linear, not quadratic, time.
TRIGGERS: tuple[bytes | re.Pattern[bytes], ...] = (
    b"Xid (",
    re.compile(rb"NVRM: (?:The NVIDIA GPU|\(PCI ID: |[^\n]{0,512}?(?:fallen off the bus|RmInitAdapter|rm_init_adapter"
               rb"|Failed to (?:enable|allocate) MSI))"),
    re.compile(rb"AER: [^\n]{0,512}?(?:rror|failed)"),
    b"Bus Error",
    b"not ready ",
    b"D3cold",
    b"Link Down",
    b"reset failed",
    b"level reset anyway",
)

# -- prefixes ------------------------------------------------------------------------------------
_KMSG = re.compile(r"(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;")
_SHIPPER = re.compile(r"\S+: kern: +\w+: \[(?P<stamp>[^\]]+)\]: ")
_DMESG_X = re.compile(r"(?:kern|user|mail|daemon|auth|syslog|lpr|news|local\d) *:(?:emerg|alert|crit|err|warn|notice|info|debug) *: ")
_MONO = re.compile(r"\[\s*(?P<s>\d+\.\d+)(?:\s*<\s*[\d.]+>)?\]\s?")
# Bounded: a -T stamp in any locale is short, and an unbounded class here backtracks quadratically.
_WALL = re.compile(r"\[(?P<stamp>[^\]\[]{5,64})\]\s?")
_CLOCK = re.compile(r"\d{1,2}:\d{2}:\d{2}")
# The kernel caps a record's text near 1 KiB (printk's PRINTK_MESSAGE_MAX); only this much of a line
# is parsed, so one absurd line costs no more than a normal one.
MAX_LINE = 4096
_SYSLOG = re.compile(r"(?P<stamp>\S+ +\d{1,2} \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T[\d:.,]+(?:Z|[+-]\d{2}:?\d{2})?)"
                     r" +(?:\S+ +)?kernel(?:\[\d+\])?: ")
_HOST_KERNEL = re.compile(r"(?:\S+ +)?kernel: ")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclass(frozen=True)
class Line:
    message: str
    stamp: str | None = None
    stamp_s: float | None = None  # seconds since boot, when the stamp is monotonic


def strip_prefix(text: str) -> Line:
    """Peel the log's prefixes off one line; what is left is the kernel's message."""
    text = text.rstrip("\r\n")
    stamp: str | None = None
    stamp_s: float | None = None
    if m := _KMSG.match(text):
        msg = _ESCAPE.sub(lambda e: chr(int(e[1], 16)), text[m.end():])
        return Line(msg, m["usec"], int(m["usec"]) / 1e6)
    text = text.lstrip()
    for _ in range(3):  # prefixes nest: syslog time, host, "kernel:", then dmesg's own stamp
        if m := _SHIPPER.match(text):
            stamp, text = m["stamp"], text[m.end():]
        elif m := _SYSLOG.match(text):
            stamp, text = stamp or m["stamp"], text[m.end():]
        elif m := _DMESG_X.match(text):
            text = text[m.end():]
        elif m := _MONO.match(text):
            stamp, stamp_s, text = m["s"], float(m["s"]), text[m.end():]
            if h := _HOST_KERNEL.match(text):  # journalctl -o short-monotonic
                text = text[h.end():]
        elif (m := _WALL.match(text)) and _CLOCK.search(m["stamp"]):
            stamp, text = m["stamp"].strip(), text[m.end():]
        else:
            break
    return Line(text.strip(), stamp, stamp_s)


# -- messages ------------------------------------------------------------------------------------
_ADDR = r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?"
_DEV_PREFIX = re.compile(rf"^[\w.\-]+ (?P<dev>{_ADDR}): ")
_XID = re.compile(rf"(?<![A-Za-z])Xid \((?:PCI:)?(?P<pci>{_ADDR})(?: GPU-I:\d+)?(?: GPU-CI:\d+)?\): (?P<xid>\d+)\b")
_GPU_LOST = re.compile(rf"NVRM: GPU (?:at )?(?:PCI:)?(?P<pci>{_ADDR}):? (?:GPU )?has fallen off the bus")
_INIT_LOST_1 = re.compile(rf"NVRM: The NVIDIA GPU (?P<pci>{_ADDR})\s*$")
_INIT_LOST_2 = re.compile(r"NVRM: \(PCI ID: [0-9a-fA-F]{4}:[0-9a-fA-F]{4}\) installed in this system has\s*$")
_INIT_LOST_3 = re.compile(r"NVRM: fallen off the bus and is not responding to commands")
_AER_ARRIVAL = re.compile(
    r"AER: (?:\[?Multiple\]? )?(?P<sev>Correct(?:ed|able)|Uncorrect(?:ed|able) \((?:Non-Fatal|Fatal)\)) "
    rf"error(?: message)? received(?::| from) (?:(?P<pci>{_ADDR})|id=[0-9a-fA-F]+)")
_AER_DETAIL = re.compile(r"PCIe Bus Error: severity=(?P<sev>Correct(?:ed|able)|Uncorrect(?:ed|able) \((?:Non-Fatal|Fatal)\))")
_NOT_READY = re.compile(r"not ready \d+ms after (?P<what>[\w >\-]+?); (?P<phase>waiting|giving up)")
_D3COLD = re.compile(r"Unable to change power state from D3cold to D0, device inaccessible")
_RMINIT = re.compile(r"(?:RmInitAdapter failed|rm_init_adapter failed)")
_NVRM_GPU = re.compile(rf"NVRM: GPU (?P<pci>{_ADDR}): ")
_MSI = re.compile(r"Failed to (?:enable MSI|allocate MSI-X)")
_LINK_DOWN = re.compile(r"Slot\([^)]*\): Link Down|: Link Down")
_RESET_FAILED = re.compile(r"(?:subordinate device reset failed|device recovery failed|reset failed)")
_FLR_ANYWAY = re.compile(r"timed out waiting for pending transaction; performing function level reset anyway")


def aer_severity(text: str) -> str:
    if text.startswith("Correct"):
        return "corrected"
    return "fatal" if "(Fatal)" in text else "nonfatal"


class Grouper:
    """Turns a sequence of messages into events, joining records spread over several lines."""

    LOOKAHEAD = 4  # lines within which an AER record's detail lines, or NVRM's third line, follow

    def __init__(self) -> None:
        self._init_lost: tuple[str | None, int, Line, list[str]] | None = None  # NVRM lines 1-2 awaiting 3
        self._aer: tuple[str | None, int] | None = None  # last AER arrival: device, line

    def feed(self, number: int, line: Line, fields: dict[str, str] | None = None,
             seq: int | None = None) -> list[KernelEvent]:
        msg = line.message
        prefix = _DEV_PREFIX.match(msg)
        dev = normalise_pci(prefix["dev"]) if prefix else None
        if dev is None and fields and fields.get("DEVICE", "").startswith("+pci:"):
            dev = normalise_pci(fields["DEVICE"][5:])

        def ev(kind: str, pci: str | None = dev, *, at: int = number, at_line: Line = line,
               text: str = msg, **kw) -> list[KernelEvent]:
            return [KernelEvent(kind, text, pci=pci, line=at, timestamp_s=at_line.stamp_s,
                                stamp=at_line.stamp, seq=seq, **kw)]

        if m := _XID.search(msg):
            if "SXid" in msg[max(0, m.start() - 1):m.start() + 1]:
                return []  # NVSwitch events, not GPU XIDs
            number_ = int(m["xid"])
            entry = xid_catalog.lookup(number_)
            return ev("xid", normalise_pci(m["pci"]), xid=number_, action=entry.action if entry else None)
        if m := _GPU_LOST.search(msg):
            return ev("fell_off_bus", normalise_pci(m["pci"]), action=xid_catalog.RESTART_BM)
        if m := _INIT_LOST_1.search(msg):
            self._init_lost = (normalise_pci(m["pci"]), number, line, [msg])
            return []
        if _INIT_LOST_2.search(msg):
            if self._init_lost and number - self._init_lost[1] <= self.LOOKAHEAD:
                self._init_lost[3].append(msg)
            return []
        if _INIT_LOST_3.search(msg):
            pending, self._init_lost = self._init_lost, None
            if pending and number - pending[1] <= self.LOOKAHEAD:
                return ev("fell_off_bus", pending[0], at=pending[1], at_line=pending[2],
                          text="\n".join([*pending[3], msg]), action=xid_catalog.RESTART_BM)
            return ev("fell_off_bus", None, action=xid_catalog.RESTART_BM)
        if m := _AER_ARRIVAL.search(msg):
            pci = normalise_pci(m["pci"]) if m["pci"] else dev
            self._aer = (pci, number)
            return ev("aer", pci, severity=aer_severity(m["sev"]))
        if m := _AER_DETAIL.search(msg):
            last = self._aer
            if last and last[0] == dev and number - last[1] <= self.LOOKAHEAD:
                self._aer = None
                return []  # the detail of the arrival line just reported
            # Another agent of the same error (with "Multiple", the port reports too): its own event.
            return ev("aer", severity=aer_severity(m["sev"]))
        if m := _NOT_READY.search(msg):
            if m["phase"] != "giving up":
                return []
            return ev("flr_not_ready" if "FLR" in m["what"] else "reset_failed")
        if _D3COLD.search(msg):
            return ev("d3cold")
        if _RMINIT.search(msg):
            g = _NVRM_GPU.search(msg)
            return ev("rminit_failed", normalise_pci(g["pci"]) if g else dev)
        if _MSI.search(msg):
            g = _NVRM_GPU.search(msg)
            return ev("msix_failed", normalise_pci(g["pci"]) if g else dev)
        if _LINK_DOWN.search(msg):
            return ev("link_down")
        if _RESET_FAILED.search(msg):
            return ev("reset_failed")
        if _FLR_ANYWAY.search(msg):
            return ev("flr_failed")
        return []


def _hits(block: bytes, limit: int) -> list[int]:
    """Start offsets of the lines (within block[:limit]) that hold a trigger."""
    starts = set()
    for trigger in TRIGGERS:
        if isinstance(trigger, bytes):
            pos = block.find(trigger, 0, limit)
            while pos != -1:
                starts.add(block.rfind(b"\n", 0, pos) + 1)
                line_end = block.find(b"\n", pos, limit)
                if line_end == -1:
                    break
                pos = block.find(trigger, line_end, limit)
        else:
            for m in trigger.finditer(block, 0, limit):
                starts.add(block.rfind(b"\n", 0, m.start()) + 1)
    return sorted(starts)


def scan(stream: BinaryIO, block_size: int = 1 << 22) -> Iterator[KernelEvent]:
    """Events of a log read from ``stream`` (bytes), streaming, in line order."""
    grouper = Grouper()
    carry = b""
    base_line = 1  # line number of carry's first line
    while True:
        data = stream.read(block_size)
        block = carry + data
        if not block:
            return
        eof = not data
        if eof:
            limit = len(block)
        else:
            # Keep the last few lines for the next round: a hit's continuation lines must be here.
            limit = len(block)
            for _ in range(Grouper.LOOKAHEAD + 1):
                limit = block.rfind(b"\n", 0, limit)
                if limit == -1:
                    break
            if limit <= 0:
                carry = block
                continue
            limit += 1
        line_no, counted_to = base_line, 0
        for start in _hits(block, limit):
            line_no += block.count(b"\n", counted_to, start)
            counted_to = start
            end = block.find(b"\n", start)
            stop = end if end != -1 else len(block)
            raw = block[start:min(stop, start + MAX_LINE)].decode("utf-8", errors="replace")
            fields = _continuation(block, end)
            yield from grouper.feed(line_no, strip_prefix(raw), fields)
        base_line = line_no + block.count(b"\n", counted_to, limit)
        carry = block[limit:]
        if eof:
            return


def _continuation(block: bytes, end: int) -> dict[str, str] | None:
    """KEY=VALUE lines that follow a raw /dev/kmsg record."""
    fields: dict[str, str] = {}
    while end != -1 and block[end + 1:end + 2] == b" ":
        nxt = block.find(b"\n", end + 1)
        text = block[end + 2:nxt if nxt != -1 else len(block)].decode("utf-8", errors="replace")
        key, sep, value = text.partition("=")
        if not sep or not key.isupper():
            break
        fields[key] = value
        end = nxt
    return fields or None


def parse_lines(lines: Iterable[str]) -> list[KernelEvent]:
    """Events of an in-memory list of lines (tests, small inputs): the same grouping as ``scan``."""
    import io

    return list(scan(io.BytesIO("\n".join(lines).encode())))
