"""The one place that runs external programs: argv lists only, a timeout always, output captured."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
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
    def run(self, argv: Sequence[str], *, timeout_s: float,
            env: Mapping[str, str] | None = None) -> CommandResult: ...


class SubprocessRunner:
    """Runs programs for real. A missing program answers like a shell does: exit 127. ``env``
    holds variables added to this process's environment for the child (CUDA_VISIBLE_DEVICES)."""

    def run(self, argv: Sequence[str], *, timeout_s: float,
            env: Mapping[str, str] | None = None) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        argv = tuple(str(a) for a in argv)
        start = time.monotonic()
        child_env = None if env is None else {**os.environ, **{str(k): str(v) for k, v in env.items()}}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, check=False, env=child_env)
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


def gnu_grep() -> str | None:
    """The path of GNU grep, or None where grep is missing or another grep (busybox, BSD)."""
    import shutil

    path = shutil.which("grep")
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, timeout=10, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if done.returncode == 0 and done.stdout.startswith(b"grep (GNU grep)") else None


def stream_lines(argv: Sequence[str], *, stdin: int) -> Iterator[bytes]:
    """The lines a program writes (without their newlines), as it writes them: for filters over inputs too big to capture.

    Runs in the C locale (byte semantics). The program is killed if the reader stops early. A
    program that fails (exit status above 1, the grep convention) raises ``OSError`` with its
    message once its output is read.
    """
    import os

    env = {**os.environ, "LC_ALL": "C"}
    # Started now, not at the first read: the caller may close its copy of ``stdin`` right away.
    proc = subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    return _drain(proc, argv[0])


def _drain(proc: subprocess.Popen[bytes], name: str) -> Iterator[bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    try:
        carry = b""
        while chunk := proc.stdout.read1(1 << 16):  # whole chunks: a generator step per line is slow
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            yield from lines
        if carry:
            yield carry
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() > 1:
            raise OSError(f"{name} failed: {err or f'exit status {proc.returncode}'}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
