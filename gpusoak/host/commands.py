"""The one place that runs external programs: argv lists only, a timeout always, output captured."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when it timed out
    stdout: str
    stderr: str
    duration_s: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult: ...


class SubprocessRunner:
    """Runs programs for real. A missing program answers like a shell does: exit 127."""

    def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        argv = tuple(str(a) for a in argv)
        start = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as err:
            return CommandResult(argv, None, _text(err.stdout), _text(err.stderr),
                                 time.monotonic() - start)
        except FileNotFoundError as err:
            return CommandResult(argv, 127, "", f"{argv[0]}: {err.strerror}", time.monotonic() - start)
        return CommandResult(argv, done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
