"""The kernel-log parser: every shape operators have logs in, and the events in them.

Formats (shared/reference/gpu-reset-reference.md sections 1.1, 3.1, 5): dmesg (monotonic ``[ 12.3]``,
``-T`` wall clock in any locale, ``-d`` deltas, ``-x`` facility:level), journalctl short (with and
without host), short-monotonic and short-iso, syslog lines that embed a monotonic stamp, raw
/dev/kmsg records (with continuation lines and ``\\xNN`` escapes), shipper prefixes such as
``HOST: kern: warning: [ISO]:``, and bare lines.

Speed: a log is mostly noise, so the scanner looks for a few literal trigger strings with
``bytes.find`` (memchr speed) and fully parses only the lines that hold one. Memory stays bounded:
input is read in blocks and only a few lines are carried from one block to the next.

Where GNU grep is installed, ``scan_path`` lets it do the sweep (one DFA pass in C, in a second
process beside this one) for a superset of the triggers, and checks every line it passes against
the exact triggers here: the events are the same as ``scan``'s, which tests assert on fuzzed logs.

Records spread over several lines (NVRM's "fallen off the bus" at init, AER's arrival line and its
detail lines) become one event that points at the record's first line (``Grouper``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

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

# Fixed strings of which every trigger line holds at least one: grep's prefilter. Each regex trigger
# above is covered by its literal parts (the NVRM one by its alternatives, the AER one by "AER: ").
PREFILTER: tuple[bytes, ...] = (
    b"Xid (", b"NVRM: The NVIDIA GPU", b"NVRM: (PCI ID: ", b"fallen off the bus", b"RmInitAdapter",
    b"rm_init_adapter", b"Failed to enable MSI", b"Failed to allocate MSI", b"AER: ", b"Bus Error",
    b"not ready ", b"D3cold", b"Link Down", b"reset failed", b"level reset anyway",
)
# A raw /dev/kmsg record carries at most SUBSYSTEM= and DEVICE= (the kernel's dev_printk_info);
# a little slack for future keys.
MAX_FIELDS = 3

# What user space writes to /dev/kmsg is recorded with a user facility (kernel/printk/printk.c
# devkmsg_write enforces LOG_USER "to be able to reliably distinguish kernel-generated messages from
# userspace-injected ones"): a raw record's priority, or dmesg -x's facility name, tells. Such a
# record is no kernel event. Formats that drop the facility (plain dmesg, journalctl)
# still show gpusoak's own cycle markers by their prefix.
MARKER_PREFIX = "gpusoak: cycle "

# -- prefixes ------------------------------------------------------------------------------------
_KMSG = re.compile(r"(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;")
_SHIPPER = re.compile(r"\S+: kern: +\w+: \[(?P<stamp>[^\]]+)\]: ")
_DMESG_X = re.compile(r"(?:kern|user|mail|daemon|auth|syslog|lpr|news|local\d) *:(?:emerg|alert|crit|err|warn|notice|info|debug) *: ")
_DMESG_X_FIRST = frozenset("kumdasln")  # first letters of the facilities above
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


class Line(NamedTuple):  # a tuple, not a dataclass: one is made per parsed line
    message: str
    stamp: str | None = None
    stamp_s: float | None = None  # seconds since boot, when the stamp is monotonic


def strip_prefix(text: str) -> Line:
    """Peel the log's prefixes off one line; what is left is the kernel's message."""
    text = text.rstrip("\r\n")
    stamp: str | None = None
    stamp_s: float | None = None
    if m := _KMSG.match(text):
        if int(m["prio"]) >> 3:  # a user-space record (facility above 0): no kernel message in it
            return Line("", m["usec"], int(m["usec"]) / 1e6)
        msg = _ESCAPE.sub(lambda e: chr(int(e[1], 16)), text[m.end():])
        return Line(msg, m["usec"], int(m["usec"]) / 1e6)
    text = text.lstrip()
    # Each pattern is tried only where a literal it needs is present: same result, fewer regexes.
    for _ in range(3):  # prefixes nest: syslog time, host, "kernel:", then dmesg's own stamp
        bracket = text[:1] == "["
        if ": kern: " in text and (m := _SHIPPER.match(text)):
            stamp, text = m["stamp"], text[m.end():]
        elif "kernel" in text and (m := _SYSLOG.match(text)):
            stamp, text = stamp or m["stamp"], text[m.end():]
        elif text[:1] in _DMESG_X_FIRST and (m := _DMESG_X.match(text)):
            if not text.startswith("kern"):  # dmesg -x names the facility: only kern's are the kernel's
                return Line("", stamp, stamp_s)
            text = text[m.end():]
        elif bracket and (m := _MONO.match(text)):
            stamp, stamp_s, text = m["s"], float(m["s"]), text[m.end():]
            if "kernel: " in text and (h := _HOST_KERNEL.match(text)):  # journalctl -o short-monotonic
                text = text[h.end():]
        elif bracket and (m := _WALL.match(text)) and _CLOCK.search(m["stamp"]):
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
        if msg.startswith(MARKER_PREFIX):
            return []  # gpusoak's own cycle marker, whatever the log's format lost of its facility
        prefix = _DEV_PREFIX.match(msg)
        dev = normalise_pci(prefix["dev"]) if prefix else None
        if dev is None and fields and fields.get("DEVICE", "").startswith("+pci:"):
            dev = normalise_pci(fields["DEVICE"][5:])

        # Each regex runs only where a literal it needs is in the message (cheap ``in`` tests first).
        if "Xid (" in msg and (m := _XID.search(msg)):  # the common event first, without a closure
            if "SXid" in msg[max(0, m.start() - 1):m.start() + 1]:
                return []  # NVSwitch events, not GPU XIDs
            number_ = int(m["xid"])
            entry = xid_catalog.lookup(number_)
            return [KernelEvent("xid", msg, normalise_pci(m["pci"]), number_, None, seq, number,
                                line.stamp_s, line.stamp, entry.action if entry else None)]

        def ev(kind: str, pci: str | None = dev, *, at: int = number, at_line: Line = line,
               text: str = msg, **kw) -> list[KernelEvent]:
            return [KernelEvent(kind, text, pci=pci, line=at, timestamp_s=at_line.stamp_s,
                                stamp=at_line.stamp, seq=seq, **kw)]

        if "fallen off" in msg and (m := _GPU_LOST.search(msg)):
            return ev("fell_off_bus", normalise_pci(m["pci"]), action=xid_catalog.RESTART_BM)
        if "The NVIDIA GPU" in msg and (m := _INIT_LOST_1.search(msg)):
            self._init_lost = (normalise_pci(m["pci"]), number, line, [msg])
            return []
        if "(PCI ID: " in msg and _INIT_LOST_2.search(msg):
            if self._init_lost and number - self._init_lost[1] <= self.LOOKAHEAD:
                self._init_lost[3].append(msg)
            return []
        if "fallen off" in msg and _INIT_LOST_3.search(msg):
            pending, self._init_lost = self._init_lost, None
            if pending and number - pending[1] <= self.LOOKAHEAD:
                return ev("fell_off_bus", pending[0], at=pending[1], at_line=pending[2],
                          text="\n".join([*pending[3], msg]), action=xid_catalog.RESTART_BM)
            return ev("fell_off_bus", None, action=xid_catalog.RESTART_BM)
        if "AER: " in msg and (m := _AER_ARRIVAL.search(msg)):
            pci = normalise_pci(m["pci"]) if m["pci"] else dev
            self._aer = (pci, number)
            return ev("aer", pci, severity=aer_severity(m["sev"]))
        if "Bus Error" in msg and (m := _AER_DETAIL.search(msg)):
            last = self._aer
            if last and last[0] == dev and number - last[1] <= self.LOOKAHEAD:
                self._aer = None
                return []  # the detail of the arrival line just reported
            # Another agent of the same error (with "Multiple", the port reports too): its own event.
            return ev("aer", severity=aer_severity(m["sev"]))
        if "not ready " in msg and (m := _NOT_READY.search(msg)):
            if m["phase"] != "giving up":
                return []
            return ev("flr_not_ready" if "FLR" in m["what"] else "reset_failed")
        if "D3cold" in msg and _D3COLD.search(msg):
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


_LITERAL_TRIGGERS = tuple(t for t in TRIGGERS if isinstance(t, bytes))
_REGEX_TRIGGERS = tuple(t.search for t in TRIGGERS if not isinstance(t, bytes))


def _is_hit(line: bytes) -> bool:
    """Does this line hold a trigger (the test ``_hits`` applies to a whole block)?"""
    for literal in _LITERAL_TRIGGERS:
        if literal in line:
            return True
    for search in _REGEX_TRIGGERS:  # noqa: SIM110 (a loop: any() with a generator is slower here)
        if search(line):
            return True
    return False


def scan_path(source: str | int, *, grep: str | None = None) -> Iterator[KernelEvent]:
    """Events of a log file (a path, or an open descriptor such as stdin's), streaming.

    With GNU grep (``grep``: its path, found on PATH when not given) the sweep runs in grep; without
    it, in ``scan``. Either way the same events come out. The log is opened before this returns,
    so a bad path raises ``OSError`` here; a read error later raises it from the iterator.
    """
    from gpusoak.host import commands

    stream = open(source, "rb", closefd=not isinstance(source, int))  # noqa: SIM115
    grep = grep or commands.gnu_grep()
    if grep is None:
        return _closing(scan(stream), stream)
    # One extended regex of literal alternatives: GNU grep's DFA beat -F's multi-string search on
    # these short strings (bench/RESULTS.md).
    pattern = "|".join(re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\1", t.decode()) for t in PREFILTER)
    if isinstance(source, str) and stream.seekable():
        # A file: grep prints each match's byte offset, and a hit's continuation lines are read
        # from the file itself, so grep prints no context lines for the many hits that have none.
        argv = [grep, "-a", "-n", "-b", "-E", "-e", pattern]
        lines = commands.stream_lines(argv, stdin=stream.fileno())
        return _closing(_scan_grep_offsets(lines, stream.fileno()), stream)
    argv = [grep, "-a", "-n", "-E", f"-A{MAX_FIELDS}", "--no-group-separator", "-e", pattern]
    with stream:  # grep has its own copy of the descriptor once started
        lines = commands.stream_lines(argv, stdin=stream.fileno())
    return _scan_grep_output(lines)


_GREP_OFFSET_LINE = re.compile(rb"(\d+):(\d+):(.*)", re.DOTALL)


def _scan_grep_offsets(lines: Iterable[bytes], fd: int) -> Iterator[KernelEvent]:
    """Feed ``grep -n -b`` output (``N:OFFSET:line``) to the grouper, reading fields at OFFSET."""
    grouper = Grouper()
    grep_line = _GREP_OFFSET_LINE.match
    for out in lines:
        m = grep_line(out)
        if m is None or not _is_hit(text := m[3]):
            continue
        end = int(m[2]) + len(text)  # the newline that ends the hit
        fields = None
        if os.pread(fd, 2, end)[1:] == b" ":  # a continuation line follows: read enough for them all
            fields = _continuation(os.pread(fd, MAX_FIELDS * (MAX_LINE + 2) + 1, end), 0)
        yield from grouper.feed(int(m[1]), _line(text), fields)


def _closing(events: Iterator[KernelEvent], stream: BinaryIO) -> Iterator[KernelEvent]:
    with stream:
        yield from events


_GREP_LINE = re.compile(rb"(\d+)([:-])(.*)", re.DOTALL)


def _scan_grep_output(lines: Iterable[bytes]) -> Iterator[KernelEvent]:
    """Feed ``grep -n -A`` output to the grouper: ``N:line`` for matches, ``N-line`` for context.

    A hit takes the KEY=VALUE lines right after it as its fields, as ``_continuation`` does; such a
    line may be a hit itself, so several hits can be waiting for fields at once.
    """
    grouper = Grouper()
    waiting: list[tuple[int, bytes, dict[str, str]]] = []  # hits, in line order, still taking fields
    last_no = 0
    grep_line = _GREP_LINE.match
    for out in lines:
        m = grep_line(out)
        if m is None:
            continue  # not grep's output format (a group separator from an older grep)
        number, text = int(m[1]), m[3]
        field = _field(text) if waiting and number == last_no + 1 else None
        if field is None:
            for hit in waiting:
                yield from grouper.feed(hit[0], _line(hit[1]), hit[2] or None)
            waiting = []
        else:
            for hit in waiting:
                if len(hit[2]) < MAX_FIELDS:
                    hit[2][field[0]] = field[1]
            while waiting and len(waiting[0][2]) >= MAX_FIELDS:
                hit = waiting.pop(0)
                yield from grouper.feed(hit[0], _line(hit[1]), hit[2])
        if m[2] == b":" and _is_hit(text):
            waiting.append((number, text, {}))
        last_no = number
    for hit in waiting:
        yield from grouper.feed(hit[0], _line(hit[1]), hit[2] or None)


def _line(raw: bytes) -> Line:
    return strip_prefix(raw[:MAX_LINE].decode("utf-8", errors="replace"))


def _field(text: bytes) -> tuple[str, str] | None:
    """A continuation line's KEY and VALUE, or None where the line is not one."""
    if text[:1] != b" ":
        return None
    key, sep, value = text[1:].decode("utf-8", errors="replace").partition("=")
    if not sep or not key.isupper():
        return None
    return key, value


def _continuation(block: bytes, end: int) -> dict[str, str] | None:
    """KEY=VALUE lines that follow a raw /dev/kmsg record."""
    fields: dict[str, str] = {}
    while end != -1 and block[end + 1:end + 2] == b" " and len(fields) < MAX_FIELDS:
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
