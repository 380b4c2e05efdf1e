"""Clocks: the real monotonic one, and a virtual one the simulator advances.

Deadlines and recovery times use ``clock.monotonic``; polling sleeps with ``clock.sleep``. The
simulator's clock moves only when something sleeps or a simulated write takes time, so a soak of
thousands of simulated cycles runs in seconds and is repeatable.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    @contextlib.contextmanager
    def branch(self) -> Iterator[None]:
        """A worker's own line of time (see VirtualClock.branch); real time needs none."""
        yield

    def merge(self, ends: list[float]) -> None:
        """After parallel workers: real time has already moved."""


class _Timeline:
    def __init__(self, now: float) -> None:
        self.now = now


class VirtualClock:
    """Simulated seconds. ``time_scale`` > 0 also sleeps that fraction for real (to make runs slow
    enough to kill in a test); listeners run whenever time moves (the sim kernel's timers).

    Parallel workers (one per GPU) each get a line of time of their own with ``branch``: what one
    worker waits for does not delay another, as on a real node where each GPU resets on its own.
    A thread a worker starts (a sysfs write with its deadline) runs in a copy of the worker's
    context and so moves the worker's time. When the workers are done, ``merge`` moves the main
    line to the latest of their ends: the node's time is that of its slowest GPU.
    """

    def __init__(self, start: float = 0.0, time_scale: float = 0.0) -> None:
        self._main = _Timeline(start)
        self._current: contextvars.ContextVar[_Timeline | None] = contextvars.ContextVar("timeline", default=None)
        self.time_scale = time_scale
        self._listeners: list[Callable[[float], None]] = []
        self._lock = threading.Lock()

    def on_advance(self, listener: Callable[[float], None]) -> None:
        self._listeners.append(listener)

    def _line(self) -> _Timeline:
        return self._current.get() or self._main

    def monotonic(self) -> float:
        return self._line().now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.time_scale > 0:
            time.sleep(seconds * self.time_scale)
        line = self._line()
        with self._lock:
            line.now += seconds
            now = line.now
        for listener in self._listeners:
            listener(now)

    @contextlib.contextmanager
    def branch(self) -> Iterator[_Timeline]:
        """Run the calling thread on a line of time of its own, from the main line's now."""
        line = _Timeline(self._main.now)
        token = self._current.set(line)
        try:
            yield line
        finally:
            self._current.reset(token)

    def timeline_id(self) -> int:
        """Which line of time the caller is on (the sim kernel keeps each GPU's timers on its own)."""
        return id(self._line())

    def main_id(self) -> int:
        return id(self._main)

    def merge(self, ends: list[float]) -> None:
        with self._lock:
            self._main.now = max([self._main.now, *ends])
