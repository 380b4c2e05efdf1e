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
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gpusoak.errors import from_oserror
from gpusoak.host.klog import MARKER_PREFIX, Grouper, Line
from gpusoak.model import KernelEvent


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
    """The kernel-log seam: a cursor, the records after a cursor, and a marker gpusoak writes."""

    def cursor(self) -> int: ...

    def records_since(self, cursor: int) -> list[KmsgRecord]: ...

    def mark(self, text: str) -> bool: ...


# -- markers ------------------------------------------------------------------------------------
# A write to /dev/kmsg becomes one record (kernel/printk/printk.c devkmsg_write). Its "<N>" prefix
# gives the level (N & 7) and, when N >> 3 is not 0, the facility; without one the kernel enforces
# LOG_USER (1) "to be able to reliably distinguish kernel-generated messages from
# userspace-injected ones". So a marker is <14>: facility user, level info.
USER_FACILITY = 1
MARK_PRIO = (USER_FACILITY << 3) | 6
MARK_MAX = 900  # below PRINTKRB_RECORD_MAX (1024), past which the write fails with EINVAL


def cycle_marker(cycle: int, action: str, target: str, phase: str) -> str:
    """``gpusoak: cycle N <action> <bdf|node> begin|end``: other health tools tell gpusoak's own
    XIDs by it; gpusoak's parser never reads one as an event (klog.MARKER_PREFIX)."""
    return f"{MARKER_PREFIX}{cycle} {action} {target} {phase}"


def mark_bytes(text: str) -> bytes:
    """One marker record as written to /dev/kmsg: the prefix, one line, a newline."""
    line = " ".join(text.split())  # one record: no newline or control character inside
    return f"<{MARK_PRIO}>{line}".encode()[:MARK_MAX] + b"\n"


class _RecordCache:
    """Records read so far, in sequence order; ``_refresh`` appends what the source has added."""

    _records: list[KmsgRecord]
    _lock = threading.Lock()  # parallel GPU workers read one log (one lock for all: reads are short)

    def _refresh(self) -> None:
        raise NotImplementedError

    def cursor(self) -> int:
        with self._lock:
            self._refresh()
            return self._records[-1].seq if self._records else -1

    def records_since(self, cursor: int) -> list[KmsgRecord]:
        with self._lock:
            self._refresh()
            # Sequence numbers only grow, so the records after the cursor are a tail of the list.
            i = len(self._records)
            while i > 0 and self._records[i - 1].seq > cursor:
                i -= 1
            return self._records[i:]


class KmsgFile(_RecordCache):
    """A file of /dev/kmsg records (the simulator's kernel log, or a saved dump).

    Read incrementally: records already parsed are kept, and each call reads only what was appended
    since, so polling a growing log costs what is new, not the whole file again. A record is taken
    once its header and continuation lines are complete (the writer appends a record in one write).
    """

    def __init__(self, path: Path | str, opener: Callable[[], Any] | None = None) -> None:
        self.path = Path(path)
        self._opener = opener  # opens the log for writing (the simulator's /dev/kmsg); None: a dump
        self._records: list[KmsgRecord] = []
        self._offset = 0  # bytes of the file already parsed
        self._lines = 0  # lines of the file already parsed

    def mark(self, text: str) -> bool:
        """Write a marker as a user would write /dev/kmsg; False where it could not be written (a
        saved dump takes none). Never raises: a marker is a courtesy to other tools."""
        if self._opener is None:
            return False
        try:
            with self._opener() as log:
                log.write(mark_bytes(text))
        except OSError:
            return False
        return True

    def _refresh(self) -> None:
        try:
            size = self.path.stat().st_size
            if size < self._offset:  # replaced or truncated: start over
                self._records, self._offset, self._lines = [], 0, 0
            if size == self._offset:
                return
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except FileNotFoundError:
            return
        except OSError as err:
            raise from_oserror(err, "reading kernel log", path=str(self.path)) from err
        end = data.rfind(b"\n") + 1
        if end == 0:
            return
        lines = data[:end].decode("utf-8", errors="replace").splitlines()
        for rec in parse_records(lines):
            self._records.append(KmsgRecord(rec.seq, rec.usec, rec.level, rec.facility, rec.message, rec.fields,
                                            rec.line + self._lines))
        self._offset += end
        self._lines += len(lines)

class DevKmsg(_RecordCache):
    """The live kernel log. Each read(2) of /dev/kmsg returns exactly one record.

    One descriptor stays open and is read incrementally: records already seen are kept, and each
    call reads only what the kernel logged since (a fresh open would re-read the whole ring buffer
    on every poll). EPIPE means records were overwritten before they were read; reading goes on with
    the next one, and the window simply starts later.
    """

    def __init__(self, path: Path | str = "/dev/kmsg") -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._records: list[KmsgRecord] = []

    def _refresh(self) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as err:
                raise from_oserror(err, "opening the kernel log", path=str(self.path)) from err
        while True:
            try:
                chunk = os.read(self._fd, 16384)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.EPIPE:
                    continue
                raise from_oserror(err, "reading the kernel log", path=str(self.path)) from err
            if not chunk:
                return
            self._records.extend(parse_records(chunk.decode("utf-8", errors="replace").splitlines()))
            if len(self._records) > 200_000:  # the ring buffer holds far fewer; keep memory bounded
                del self._records[:100_000]

    def mark(self, text: str) -> bool:
        """Write a marker record. A fresh write-only descriptor each time: the kernel rate-limits
        writes per open file (devkmsg_open's ratelimit_default_init: 10 per 5 s, the rest dropped
        while the write still succeeds, unless printk.devkmsg=on), so one kept descriptor would
        lose markers in a fast or parallel run. A write-only open needs no CAP_SYSLOG; with
        printk.devkmsg=off it fails with EPERM. Never raises: a marker must not fail a cycle."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            os.write(fd, mark_bytes(text))
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- events -------------------------------------------------------------------------------------
def events(records: Iterable[KmsgRecord]) -> list[KernelEvent]:
    """Events in /dev/kmsg records, through the same parser and grouping as any other log.

    Only the kernel's own records (facility 0) count: whatever user space writes to /dev/kmsg,
    gpusoak's cycle markers and a tool replaying Xid lines included, is recorded with a user
    facility (devkmsg_write never lets a write claim facility 0)."""
    grouper = Grouper()
    out: list[KernelEvent] = []
    for rec in records:
        if rec.facility != 0:
            continue
        line = Line(rec.message, str(rec.usec), rec.usec / 1e6)
        out.extend(grouper.feed(rec.line, line, dict(rec.fields), seq=rec.seq))
    return out
