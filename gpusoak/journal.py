"""The journal: an append-only, fsync'd record of every cycle. Reports are rebuilt from it.

One JSON object a line. The first is the run header (``"type": "run"``); each cycle is a
``"type": "cycle"`` line written and fsync'd before the next cycle starts, so a run killed at any
moment loses no finished cycle. Reading tolerates a last line cut short by such a kill. A run
continued with ``--resume`` appends to its own journal: no second header, a ``resume`` record,
then its cycles (gpusoak/options.py says which runs can be continued).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpusoak.errors import JournalError
from gpusoak.model import FAILED, CycleResult, Finding, KernelEvent

# What a cycle's kernel-log window held after the cycle was judged (gpusoak.soak._close): events
# logged after its settle window, and a failure of the next cycle's load. "charged": true turns that
# cycle, judged good when it was journaled, into a failure everywhere the journal is read.
AFTER_CYCLE = "after_cycle"

JOURNAL_SCHEMA = "gpusoak.journal/1"


class Journal:
    def __init__(self, path: Path | str, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.count = 0
        self._lock = threading.Lock()  # parallel GPU workers append to one journal
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            cut = not fresh and not _ends_with_newline(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as err:
            raise JournalError(f"cannot open the journal: {err.strerror}", path=str(self.path)) from err
        if fresh:
            self._append({"type": "run", "schema": JOURNAL_SCHEMA, **header})
            _fsync_dir(self.path.parent)
        elif cut:
            # A continued run (--resume) after a kill mid-line: end the cut line, which reading
            # reports, so that the first new record is a line of its own.
            self._write("\n")

    def append(self, result: CycleResult) -> None:
        with self._lock:
            self._append({"type": "cycle", **result.to_dict()})
            self.count += 1

    def note(self, record: dict[str, Any]) -> None:
        """Any other record (``type`` set by the caller): what the run did besides cycles."""
        with self._lock:
            self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        self._write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")

    def _write(self, line: str) -> None:
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise JournalError(
                f"journal write failed: {err.strerror}; the {self.count} cycles before this one are "
                f"safe in the journal and the reports can be rebuilt with `gpusoak report {self.path}`",
                path=str(self.path)) from err

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # everything was already fsync'd line by line


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def header_of(path: Path | str) -> dict[str, Any] | None:
    """The run header (the first line) of a journal, without reading the cycles; None if it has none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            record = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("type") == "run" else None


def last_record_type(path: Path | str) -> str | None:
    """The type of a journal's last whole record (a run that ended cleanly ends with ``restore``
    when it had put the node back); None when there is none or it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [line for line in tail.split("\n") if line.strip()]
    if not lines or not tail.endswith("\n"):
        return None  # empty, or the last line was cut short by a kill
    try:
        return json.loads(lines[-1]).get("type")
    except (ValueError, AttributeError):
        return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the file itself is synced
    finally:
        os.close(fd)


@dataclass
class JournalContent:
    header: dict[str, Any]
    results: list[CycleResult]
    problems: list[str] = field(default_factory=list)  # lines that could not be read, and why
    notes: list[dict[str, Any]] = field(default_factory=list)  # restore records and the like


def read(path: Path | str) -> JournalContent:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise JournalError(f"cannot read the journal: {err.strerror}", path=str(path)) from err
    header: dict[str, Any] | None = None
    results: list[CycleResult] = []
    problems: list[str] = []
    notes: list[dict[str, Any]] = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kind = record.pop("type")
            if kind == "run":
                header = header or record
            elif kind == "cycle":
                results.append(CycleResult.from_dict(record))
            elif kind in ("restore", "resume", "services", "settings", "mig", "mig_mode_pending", "runtime_pm",
                          "link_warning", "inventory_warning", AFTER_CYCLE):
                # what restore changed; a continued run's start (--resume); services stopped; settings
                # and MIG layouts put back after a cycle; a pending MIG-mode change found before the
                # first reset; what a cycle's window held after it was judged; runtime PM turned off;
                # a link below capability seen under load before the first reset (the header has the
                # idle ones); the node's inventory could not be kept where it lives
                notes.append({"type": kind, **record})
            else:
                problems.append(f"line {number}: unknown record type {kind!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
            why = "cut short (the run was killed while writing it)" if last else f"unreadable: {err}"
            problems.append(f"line {number}: {why}")
    if header is None:
        raise JournalError("not a gpusoak journal: no run header", path=str(path))
    if header.get("schema") != JOURNAL_SCHEMA:
        raise JournalError(f"unsupported journal schema {header.get('schema')!r}", path=str(path))
    return JournalContent(header, charge(results, [n for n in notes if n["type"] == AFTER_CYCLE]), problems, notes)


def charge(results: list[CycleResult], records: list[dict[str, Any]]) -> list[CycleResult]:
    """The results with each charged after_cycle record applied to the cycle it names: failed, with
    the late events and findings added (and the ladder climbed for a failed load)."""
    index = {(r.bdf, r.action, r.cycle): i for i, r in enumerate(results)}
    out = list(results)
    for rec in records:
        i = index.get((rec.get("bdf"), rec.get("action"), rec.get("cycle")))
        if not rec.get("charged") or i is None:
            continue
        out[i] = charged(out[i], rec)
    return out


def charged(result: CycleResult, record: dict[str, Any]) -> CycleResult:
    findings = tuple(Finding.from_dict(f) for f in record.get("findings", []))
    events = tuple(KernelEvent.from_dict(e) for e in record.get("events", []))
    ladder = tuple(Finding.from_dict(f) for f in record.get("ladder", []))
    late = Finding("after_settle", f"the cycle was judged {result.outcome}; then, in its window {record.get('window')}: "
                   + "; ".join(f"{f.reason}: {f.detail}" for f in findings))
    return dataclasses.replace(result, outcome=FAILED, recovery_s=None, findings=(*findings, late, *result.findings),
                               events=(*result.events, *events), ladder=result.ladder + ladder,
                               recovered_by=record.get("recovered_by") or result.recovered_by)
