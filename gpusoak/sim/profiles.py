"""Fault profiles: how a simulated GPU answers a reset.

A profile decides outcomes only; the kernel model (gpusoak.sim.kernel) turns an outcome into what
a real node shows: sysfs values, /dev/kmsg records in the kernel's and driver's wording, NVML errors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# What one FLR does to the function.
FLR_OK = "ok"
FLR_NOT_READY = "not_ready"  # "not ready 65535ms after FLR; giving up": config space reads all-ones


@dataclass(frozen=True)
class FlrOutcome:
    result: str
    reset_s: float  # how long the write to "reset" blocks
    settle_s: float = 0.0  # link retraining after the write returned (reads a lower speed meanwhile)


class FaultProfile:
    NAME = ""
    PARAMS: tuple[str, ...] = ()

    def flr(self, rng: random.Random, cycle: int) -> FlrOutcome:
        # PCIe requires 100 ms after FLR before config requests (PCIe base spec 6.6.2); a healthy
        # function then answers at once. Link retraining to full speed follows within a second.
        return FlrOutcome(FLR_OK, reset_s=rng.uniform(0.10, 0.16), settle_s=rng.uniform(0.05, 0.8))

    def describe(self) -> str:
        return self.NAME


class Healthy(FaultProfile):
    NAME = "healthy"


@dataclass(frozen=True)
class FlakyFlr(FaultProfile):
    """With probability p an FLR leaves the function not ready; the kernel gives up after 65 s.

    65535 ms is the sum of pci_dev_wait's doubling waits (1 + 2 + ... + 32768 ms) once it passes
    the 60 s FLR timeout, which is why the real message reads "not ready 65535ms after FLR".
    A later FLR may bring the function back, as it does in the field.
    """

    p: float = 0.3
    NAME = "flaky-flr"
    PARAMS = ("p",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"flaky-flr: p must be within 0..1, got {self.p}")

    def flr(self, rng: random.Random, cycle: int) -> FlrOutcome:
        if rng.random() < self.p:
            return FlrOutcome(FLR_NOT_READY, reset_s=65.535)
        return super().flr(rng, cycle)

    def describe(self) -> str:
        return f"{self.NAME} (p={self.p})"


PROFILES: dict[str, type[FaultProfile]] = {p.NAME: p for p in (Healthy, FlakyFlr)}
