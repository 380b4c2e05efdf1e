"""Fault profiles: how a simulated GPU answers each reset path.

A profile decides outcomes only; the kernel model (gpusoak.sim.kernel) turns an outcome into what
a real node shows: sysfs values, /dev/kmsg records in the kernel's and driver's wording, NVML
errors, command exit codes. Every profile is the way GPUs fail in the field (DESIGN.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Outcomes of one reset (FLR, bus reset, or nvidia-smi -r).
OK = "ok"
NOT_READY = "not_ready"  # "not ready 65535ms after FLR; giving up": config space reads all-ones
D3COLD = "d3cold"  # "Unable to change power state from D3cold to D0, device inaccessible"; stays so
FELL_OFF = "fell_off"  # Xid 79 and NVRM's "GPU has fallen off the bus"; only a reboot helps

# 65535 ms is the sum of pci_dev_wait's doubling waits (1 + 2 + ... + 32768 ms) once it passes the
# 60 s timeout, which is why the kernel's message reads "not ready 65535ms after FLR".
NOT_READY_S = 65.535


@dataclass(frozen=True)
class ResetOutcome:
    result: str
    reset_s: float  # how long the write (or command) blocks
    settle_s: float = 0.0  # link retraining after it returned (reads a lower speed meanwhile)
    link_width: int | None = None  # the width the link retrains at, when not the GPU's own
    link_speed: str | None = None  # the speed it retrains at (seen under load), when not the trained one
    aer_corrected: int = 0  # corrected AER errors the reset provokes on the link


class FaultProfile:
    NAME = ""
    PARAMS: tuple[str, ...] = ()
    STICKY = False  # a dead GPU of this profile stays dead until the node reboots

    def reset(self, rng: random.Random, kind: str, n: int, loaded: bool = False) -> ResetOutcome:
        """``kind`` is flr, bus or gpu_reset; ``n`` counts this GPU's resets, 1-based; ``loaded`` says
        whether a load ran on the GPU since its last reset."""
        # PCIe requires 100 ms after FLR before config requests (PCIe base spec 6.6.2); drivers/pci/
        # pci.c pcie_flr does msleep(100) then pci_dev_wait. A bus reset also waits for the link
        # and the device (pci_bridge_wait_for_secondary_bus, reference 6). The spans above those
        # floors (0.10-0.16 s, 0.15-0.20 s), nvidia-smi -r's 0.4-1.2 s and the link's settle time
        # are the simulator's [I]; nvidia-smi -r taken as an FLR (its default, reference 4.1).
        base = {"flr": (0.10, 0.16), "bus": (0.15, 0.20), "gpu_reset": (0.4, 1.2)}[kind]
        return ResetOutcome(OK, rng.uniform(*base), settle_s=rng.uniform(0.05, 0.8))

    def unbind_blocks(self) -> bool:
        return False

    def corrupts(self, rng: random.Random) -> bool:
        return False

    def probe_fails(self, after_vfio: bool) -> bool:
        return False

    def module_busy(self) -> bool:
        return False

    def late_event_s(self, rng: random.Random) -> float | None:
        """Seconds after nvidia is bound back following a reset at which the driver reports a fault
        of its own accord (None: it does not)."""
        return None

    def describe(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)}" for k in self.PARAMS)
        return f"{self.NAME} ({params})" if params else self.NAME


def _check_p(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: p must be within 0..1, got {value}")


class Healthy(FaultProfile):
    NAME = "healthy"


@dataclass(frozen=True)
class FlakyFlr(FaultProfile):
    """With probability p an FLR (or nvidia-smi -r, which is an FLR) leaves the function not ready.
    A later reset may bring it back, as it does in the field."""

    p: float = 0.3
    NAME = "flaky-flr"
    PARAMS = ("p",)

    def __post_init__(self) -> None:
        _check_p(self.NAME, self.p)

    def reset(self, rng: random.Random, kind: str, n: int, loaded: bool = False) -> ResetOutcome:
        if kind in ("flr", "gpu_reset") and rng.random() < self.p:
            return ResetOutcome(NOT_READY, NOT_READY_S)
        return super().reset(rng, kind, n, loaded)


@dataclass(frozen=True)
class Degrading(FaultProfile):
    """Works in the morning: the chance that a reset leaves it not ready grows with every reset."""

    base: float = 0.0
    slope: float = 0.02
    NAME = "degrading"
    PARAMS = ("base", "slope")

    def reset(self, rng: random.Random, kind: str, n: int, loaded: bool = False) -> ResetOutcome:
        if kind in ("flr", "gpu_reset") and rng.random() < min(1.0, self.base + self.slope * n):
            return ResetOutcome(NOT_READY, NOT_READY_S)
        return super().reset(rng, kind, n, loaded)


@dataclass(frozen=True)
class D3coldStuck(FaultProfile):
    """With probability p a reset leaves the GPU in D3cold for good."""

    p: float = 0.25
    NAME = "d3cold-stuck"
    PARAMS = ("p",)
    STICKY = True

    def __post_init__(self) -> None:
        _check_p(self.NAME, self.p)

    def reset(self, rng: random.Random, kind: str, n: int, loaded: bool = False) -> ResetOutcome:
        if rng.random() < self.p:
            return ResetOutcome(D3COLD, rng.uniform(0.1, 0.2))
        return super().reset(rng, kind, n, loaded)


@dataclass(frozen=True)
class FallsOffBusUnderLoad(FaultProfile):
    """With probability p a reset of a GPU that was just loaded knocks it off the bus (Xid 79);
    only a reboot helps. An idle GPU resets cleanly, which is why soaks must load."""

    p: float = 0.2
    NAME = "falls-off-bus-under-load"
    PARAMS = ("p",)
    STICKY = True

    def __post_init__(self) -> None:
        _check_p(self.NAME, self.p)

    def reset(self, rng: random.Random, kind: str, n: int, loaded: bool = False) -> ResetOutcome:
        if loaded and rng.random() < self.p:
            return ResetOutcome(FELL_OFF, rng.uniform(0.1, 0.2))
        return super().reset(rng, kind, n, loaded)


@dataclass(frozen=True)
class DegradedLink(FaultProfile):
    """With probability p a function-level reset retrains the link narrower (``width``) or, with
    ``speed`` set ("16.0 GT/s PCIe"), slower (``width = 0`` keeps the width); a bus reset, which retrains the link from the port,
    restores it. A slower link shows under load only: at idle the GPU runs Gen1 anyway."""

    p: float = 0.3
    width: int = 8
    speed: str | None = None
    NAME = "degraded-link"
    PARAMS = ("p", "width", "speed")

    def __post_init__(self) -> None:
        _check_p(self.NAME, self.p)

    def reset(self, rng: random.Random, kind: str, n: int, loaded: bool = False) -> ResetOutcome:
        out = super().reset(rng, kind, n, loaded)
        if kind != "bus" and rng.random() < self.p:
            return ResetOutcome(OK, out.reset_s, out.settle_s, link_width=self.width or None, link_speed=self.speed)
        return out


@dataclass(frozen=True)
class AerStorm(FaultProfile):
    """Every reset provokes a burst of corrected AER errors on the GPU's link."""

    per_reset: int = 120  # about 180/min at a real node's cycle of some 40 s: three times the 60/min gate
    NAME = "aer-storm"
    PARAMS = ("per_reset",)

    def reset(self, rng: random.Random, kind: str, n: int, loaded: bool = False) -> ResetOutcome:
        out = super().reset(rng, kind, n, loaded)
        return ResetOutcome(OK, out.reset_s, out.settle_s, aer_corrected=self.per_reset)


@dataclass(frozen=True)
class SilentCorruption(FaultProfile):
    """With probability p a reset "succeeds" but leaves memory returning wrong data: everything
    looks recovered until a load checks what it reads back."""

    p: float = 0.2
    NAME = "silent-corruption"
    PARAMS = ("p",)

    def __post_init__(self) -> None:
        _check_p(self.NAME, self.p)

    def corrupts(self, rng: random.Random) -> bool:
        return rng.random() < self.p


class UnbindHangs(FaultProfile):
    """Unbinding it from nvidia blocks in the kernel and never returns."""

    NAME = "unbind-hangs"

    def unbind_blocks(self) -> bool:
        return True


class ModuleBusy(FaultProfile):
    """Something keeps the nvidia module in use: rmmod answers "Module nvidia is in use"."""

    NAME = "module-busy"

    def module_busy(self) -> bool:
        return True


class VfioReattachFails(FaultProfile):
    """Goes to vfio-pci and back, and then nvidia's probe fails (RmInitAdapter failed). Only a
    fresh load of the driver brings it back."""

    NAME = "vfio-reattach-fails"

    def probe_fails(self, after_vfio: bool) -> bool:
        return after_vfio


@dataclass(frozen=True)
class LateGspTimeout(FaultProfile):
    """With probability p, ``delay`` seconds after nvidia is bound back following a reset, an RPC
    to the GSP times out: Xid 119, and RM has lost the GPU until the driver is reloaded. Every check
    passes until then. RM reports the timeout only once its wait has run out: the report in
    src/nvidia/src/kernel/gpu/gsp/kernel_gsp.c ("Timeout after %llus of waiting for RPC response
    from GPU%d GSP!", NV_ERROR_LOG_COND) takes ts_end when the wait ends. Which RPC, and how long
    after the bind, are the simulator's [I]."""

    p: float = 1.0
    delay: float = 6.0
    NAME = "late-gsp-timeout"
    PARAMS = ("p", "delay")

    def __post_init__(self) -> None:
        _check_p(self.NAME, self.p)
        if self.delay <= 0:
            raise ValueError(f"{self.NAME}: delay must be positive, got {self.delay}")

    def late_event_s(self, rng: random.Random) -> float | None:
        return self.delay if rng.random() < self.p else None


PROFILES: dict[str, type[FaultProfile]] = {p.NAME: p for p in (
    Healthy, FlakyFlr, Degrading, D3coldStuck, FallsOffBusUnderLoad, DegradedLink, AerStorm, SilentCorruption,
    UnbindHangs, ModuleBusy, VfioReattachFails, LateGspTimeout)}
