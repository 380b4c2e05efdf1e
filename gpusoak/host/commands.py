"""The one place that runs external programs: argv lists only, a timeout always, output captured."""

from __future__ import annotations

import contextlib
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
    left_running: int | None = None  # the PID of a child that outlived its deadline and its kill

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
    holds variables added to this process's environment for the child (CUDA_VISIBLE_DEVICES).

    The deadline holds even for a child that does not die: ``subprocess.run`` kills a child past
    its timeout and then waits for it, and for its output, without any limit, so a child stuck in
    the kernel (an nvidia-smi or NVML query in a wedged driver, an rmmod in nv_pci_remove's wait)
    or a grandchild that keeps its pipes open would hang gpusoak. Here the kill gets
    ``kill_grace_s`` to take effect; after that the child is left behind, its PID in the result."""

    kill_grace_s = 5.0

    def run(self, argv: Sequence[str], *, timeout_s: float,
            env: Mapping[str, str] | None = None) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        argv = tuple(str(a) for a in argv)
        start = time.monotonic()
        child_env = None if env is None else {**os.environ, **{str(k): str(v) for k, v in env.items()}}
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL, env=child_env)
        except FileNotFoundError as err:
            return CommandResult(argv, 127, "", f"{argv[0]}: {err.strerror}", time.monotonic() - start)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                out, err = proc.communicate(timeout=self.kill_grace_s)
            except subprocess.TimeoutExpired as late:
                # Still there (uninterruptible sleep) or its pipes held by a grandchild: give up on
                # it rather than on the deadline.
                for pipe in (proc.stdout, proc.stderr):
                    with contextlib.suppress(OSError):
                        pipe.close()
                return CommandResult(argv, None, _text(late.stdout), _text(late.stderr),
                                     time.monotonic() - start, left_running=proc.pid)
            return CommandResult(argv, None, out or "", err or "", time.monotonic() - start)
        return CommandResult(argv, proc.returncode, out, err, time.monotonic() - start)


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
