"""The kernel log: /dev/kmsg records, a cursor over them, and the events they report.

A /dev/kmsg record is ``prio,seq,usec,flags[,...];message`` followed by continuation lines that
begin with a space (``SUBSYSTEM=pci``, ``DEVICE=+pci:0000:65:00.0``); non-printable bytes in the
message are escaped as ``\\xNN`` (Documentation/ABI/testing/dev-kmsg). A cursor is the sequence
number of the last record seen; only records after it count, so old dmesg lines never fail a cycle.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpusoak.errors import from_oserror
from gpusoak.model import KernelEvent, normalise_pci


@dataclass(frozen=True)
class KmsgRecord:
    seq: int
    usec: int
    level: int  # syslog level 0 (emerg) .. 7 (debug)
    facility: int
    message: str
    fields: tuple[tuple[str, str], ...] = ()
    line: int = 0  # 1-based line of the record's header in its source

    def field(self, key: str) -> str | None:
        for k, v in self.fields:
            if k == key:
                return v
        return None


_HEADER = re.compile(r"(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),(?P<flags>[^;,]*)(?:,[^;]*)?;(?P<msg>.*)")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def unescape(message: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1], 16)), message)


def parse_records(lines: Iterable[str]) -> Iterator[KmsgRecord]:
    """Records from /dev/kmsg text, one header line each plus its continuation lines.

    Lines that are neither (a dump cut short, stray text) are skipped: a damaged log loses the
    damaged record only.
    """
    pending: dict | None = None
    fields: list[tuple[str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if line.startswith(" ") and pending is not None:
            key, sep, value = line[1:].partition("=")
            if sep:
                fields.append((key, value))
            continue
        m = _HEADER.fullmatch(line)
        if pending is not None:
            yield KmsgRecord(fields=tuple(fields), **pending)
            pending, fields = None, []
        if m is None:
            continue
        prio = int(m["prio"])
        pending = dict(seq=int(m["seq"]), usec=int(m["usec"]), level=prio & 7, facility=prio >> 3,
                       message=unescape(m["msg"]), line=number)
    if pending is not None:
        yield KmsgRecord(fields=tuple(fields), **pending)


class KernelLog(Protocol):
    """The kernel-log seam: a cursor, and the records after a cursor."""

    def cursor(self) -> int: ...

    def records_since(self, cursor: int) -> list[KmsgRecord]: ...


class KmsgFile:
    """A file of /dev/kmsg records (the simulator's kernel log, or a saved dump)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _records(self) -> Iterator[KmsgRecord]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                yield from parse_records(f)
        except FileNotFoundError:
            return
        except OSError as err:
            raise from_oserror(err, "reading kernel log", path=str(self.path)) from err

    def cursor(self) -> int:
        last = -1
        for rec in self._records():
            last = rec.seq
        return last

    def records_since(self, cursor: int) -> list[KmsgRecord]:
        return [r for r in self._records() if r.seq > cursor]


class DevKmsg:
    """The live kernel log. Each read(2) of /dev/kmsg returns exactly one record.

    A fresh open starts at the oldest record still in the ring buffer, so reading the buffer and
    keeping records with seq > cursor needs no state between cycles. EPIPE means records were
    overwritten before we read them; reading continues with the next one.
    """

    def __init__(self, path: Path | str = "/dev/kmsg") -> None:
        self.path = Path(path)

    def _read_all(self) -> Iterator[KmsgRecord]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            raise from_oserror(err, "opening the kernel log", path=str(self.path)) from err
        try:
            while True:
                try:
                    chunk = os.read(fd, 16384)
                except BlockingIOError:
                    return
                except OSError as err:
                    if err.errno == errno.EPIPE:
                        continue
                    raise from_oserror(err, "reading the kernel log", path=str(self.path)) from err
                if not chunk:
                    return
                yield from parse_records(chunk.decode("utf-8", errors="replace").splitlines())
        finally:
            os.close(fd)

    def cursor(self) -> int:
        last = -1
        for rec in self._read_all():
            last = rec.seq
        return last

    def records_since(self, cursor: int) -> list[KmsgRecord]:
        return [r for r in self._read_all() if r.seq > cursor]


# -- events -------------------------------------------------------------------------------------
_ADDR = r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?"
# dev_printk prefix: "<driver or bus> <device>: " e.g. "pci 0000:65:00.0: ", "nvidia 0000:65:00.0: ".
_DEV_PREFIX = re.compile(rf"^(?:[\w.\-]+ )?(?P<dev>{_ADDR}): ")

_XID = re.compile(
    rf"NVRM: Xid \((?:PCI:)?(?P<pci>{_ADDR})(?: GPU-I:\d+)?(?: GPU-CI:\d+)?\): (?P<xid>\d+)\b", re.I)
_NVRM_GPU_LOST = re.compile(rf"NVRM: GPU (?P<pci>{_ADDR}): GPU has fallen off the bus", re.I)
_NOT_READY = re.compile(r"not ready (?P<ms>\d+)ms after (?P<what>[\w >\-]+?); (?P<phase>waiting|giving up)")
_D3COLD = re.compile(r"Unable to change power state from D3cold to D0, device inaccessible")
_AER_ARRIVAL = re.compile(
    rf"AER: (?:\[?Multiple\]? )?(?P<sev>Correct(?:ed|able)|Uncorrect(?:ed|able) \((?:Non-Fatal|Fatal)\)) "
    rf"error(?: message)? received(?::| from) (?P<pci>{_ADDR})")
_AER_DETAIL = re.compile(r"PCIe Bus Error: severity=(?P<sev>Correct(?:ed|able)|Uncorrect(?:ed|able) \((?:Non-Fatal|Fatal)\))")


def aer_severity(text: str) -> str:
    if text.startswith("Correct"):
        return "corrected"
    return "fatal" if "(Fatal)" in text else "nonfatal"


def events_in_record(rec: KmsgRecord) -> list[KernelEvent]:
    """The events one record reports (usually none)."""
    msg = rec.message
    device = rec.field("DEVICE")
    prefix = _DEV_PREFIX.match(msg)
    dev_pci = normalise_pci(prefix["dev"]) if prefix else None
    if dev_pci is None and device and device.startswith("+pci:"):
        dev_pci = normalise_pci(device[len("+pci:"):])
    common = dict(text=msg, seq=rec.seq, line=rec.line, timestamp_s=rec.usec / 1e6)

    if m := _XID.search(msg):
        return [KernelEvent("xid", pci=normalise_pci(m["pci"]), xid=int(m["xid"]), **common)]
    if m := _NVRM_GPU_LOST.search(msg):
        return [KernelEvent("fell_off_bus", pci=normalise_pci(m["pci"]), **common)]
    if m := _AER_ARRIVAL.search(msg):
        return [KernelEvent("aer", pci=normalise_pci(m["pci"]), severity=aer_severity(m["sev"]), **common)]
    if m := _AER_DETAIL.search(msg):
        return [KernelEvent("aer", pci=dev_pci, severity=aer_severity(m["sev"]), **common)]
    if (m := _NOT_READY.search(msg)) and m["phase"] == "giving up":
        kind = "flr_not_ready" if "FLR" in m["what"] else "reset_failed"
        return [KernelEvent(kind, pci=dev_pci, **common)]
    if _D3COLD.search(msg):
        return [KernelEvent("d3cold", pci=dev_pci, **common)]
    return []


def events(records: Iterable[KmsgRecord]) -> list[KernelEvent]:
    out: list[KernelEvent] = []
    for rec in records:
        out.extend(events_in_record(rec))
    return out
