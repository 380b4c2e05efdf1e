"""Clocks: the real monotonic one, and a virtual one the simulator advances.

Deadlines and recovery times use ``clock.monotonic``; polling sleeps with ``clock.sleep``. The
simulator's clock moves only when something sleeps or a simulated write takes time, so a soak of
thousands of simulated cycles runs in seconds and is repeatable.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class VirtualClock:
    """Simulated seconds. ``time_scale`` > 0 also sleeps that fraction for real (to make runs slow
    enough to kill in a test); listeners run whenever time moves (the sim kernel's timers)."""

    def __init__(self, start: float = 0.0, time_scale: float = 0.0) -> None:
        self._now = start
        self.time_scale = time_scale
        self._listeners: list[Callable[[float], None]] = []

    def on_advance(self, listener: Callable[[float], None]) -> None:
        self._listeners.append(listener)

    def monotonic(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.time_scale > 0:
            time.sleep(seconds * self.time_scale)
        self._now += seconds
        for listener in self._listeners:
            listener(self._now)
