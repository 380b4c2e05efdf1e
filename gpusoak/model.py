"""Small value types shared by everything.

Each is frozen and serialised one way: ``to_dict`` for the journal and the reports, ``from_dict``
to read a journal back. Units are in the field names (``recovery_s``, ``memory_total_bytes``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from gpusoak.errors import InvalidAddress

# DDDD:BB:DD.F as the kernel prints it (domain is %04x, so wider domains such as VMD's 10000 print
# five digits) and NVML's 00000000:BB:DD.F (domain %08X). Nothing else is accepted: no spaces,
# no path pieces, no trailing newline.
_BDF = re.compile(r"(?P<domain>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2}):(?P<device>[0-9a-fA-F]{2})\.(?P<function>[0-7])")
_SLOT = re.compile(r"(?P<domain>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2}):(?P<device>[0-9a-fA-F]{2})")


@dataclass(frozen=True, order=True)
class PciAddress:
    """A validated PCI function address; the only way an address becomes part of a path."""

    domain: int
    bus: int
    device: int
    function: int

    def __post_init__(self) -> None:
        if not (0 <= self.domain <= 0xFFFFFFFF and 0 <= self.bus <= 0xFF
                and 0 <= self.device <= 0x1F and 0 <= self.function <= 7):
            raise InvalidAddress("PCI address out of range", value=repr(tuple(dataclasses.astuple(self))))

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        if not isinstance(text, str):
            raise InvalidAddress("PCI address must be text", value=repr(text))
        m = _BDF.fullmatch(text)
        if m is None:
            raise InvalidAddress("not a PCI address (want DDDD:BB:DD.F)", value=repr(text))
        return cls(int(m["domain"], 16), int(m["bus"], 16), int(m["device"], 16), int(m["function"], 16))

    @property
    def slot(self) -> str:
        """``DDDD:BB:DD``: the form NVRM's Xid lines use (no function number)."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}"

    @property
    def nvml_bus_id(self) -> str:
        """``00000000:BB:DD.F``: the form of NVML's ``pciInfo.busId``."""
        return f"{self.domain:08X}:{self.bus:02X}:{self.device:02X}.{self.function:X}"

    def __str__(self) -> str:
        return f"{self.slot}.{self.function:x}"

    def __repr__(self) -> str:
        return f"PciAddress('{self}')"


def parse_addresses(text: str) -> list[PciAddress]:
    """A comma-separated list of PCI addresses (an option's value); empty items are ignored."""
    return [PciAddress.parse(t.strip()) for t in text.split(",") if t.strip()]


@functools.lru_cache(maxsize=4096)  # a log names the same few addresses over and over
def normalise_pci(text: str) -> str | None:
    """Normalise a PCI address from a log line to ``DDDD:BB:DD.F`` or ``DDDD:BB:DD``; None if neither."""
    m = _BDF.fullmatch(text)
    if m:
        return str(PciAddress.parse(text))
    m = _SLOT.fullmatch(text)
    if m:
        return f"{int(m['domain'], 16):04x}:{int(m['bus'], 16):02x}:{int(m['device'], 16):02x}"
    return None


def pci_matches(event_pci: str | None, bdf: PciAddress) -> bool:
    """Does a log's address (function or slot form) name this function?"""
    if event_pci is None:
        return False
    return event_pci == str(bdf) or event_pci == bdf.slot


@dataclass(frozen=True)
class KernelEvent:
    """One event the kernel log reported (see gpusoak.host.kmsg)."""

    kind: str  # xid, aer, flr_not_ready, fell_off_bus, d3cold, ...
    text: str  # the record's message, as logged
    pci: str | None = None  # DDDD:BB:DD.F, or DDDD:BB:DD where the log omits the function
    xid: int | None = None
    severity: str | None = None  # AER: corrected, nonfatal, fatal
    seq: int | None = None  # /dev/kmsg sequence number
    line: int | None = None  # 1-based line of the record's first line in its source
    timestamp_s: float | None = None  # seconds since boot, when the source gives it
    stamp: str | None = None  # the log's own time stamp as written (monotonic, wall clock, ISO)
    action: str | None = None  # for an XID: the catalog's immediate-action bucket

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KernelEvent:
        return cls(**d)


@dataclass(frozen=True)
class Check:
    """One recovery assertion: passed, failed or skipped (could not look, with the reason)."""

    name: str
    status: str  # pass, fail, skip
    detail: str = ""
    # What was compared, where the check compares values (the link: width in lanes, speed in GT/s):
    # the verdict reads these, never the prose of ``detail``.
    expected: float | None = None
    actual: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(**d)


@dataclass(frozen=True)
class LinkState:
    current_speed: str | None  # "32.0 GT/s PCIe", "Unknown"; None where sysfs lacks the file
    current_width: int | None
    max_speed: str | None
    max_width: int | None


def link_gts(speed: str | None) -> float | None:
    """The rate of a sysfs link speed ("32.0 GT/s PCIe", pci-sysfs.c via pci_speed_string) in GT/s;
    None for "Unknown", a missing file or any other text."""
    head = (speed or "").split(" GT/s")[0]
    try:
        return float(head) if speed and " GT/s" in speed else None
    except ValueError:
        return None


def link_capability(fn: LinkState | None, port: LinkState | None) -> tuple[str | None, int | None]:
    """The link a GPU can train at: the lesser of its own and its upstream port's maximum speed and
    width (a link trains at the highest rate and width both ends support); None where unknown."""
    speeds = [s for s in (fn and fn.max_speed, port and port.max_speed) if link_gts(s) is not None]
    widths = [w for w in (fn and fn.max_width, port and port.max_width) if w]
    return (min(speeds, key=link_gts) if speeds else None), (min(widths) if widths else None)


@dataclass(frozen=True)
class Snapshot:
    """What one PCI function looked like at one moment (never reused across cycles)."""

    bdf: str
    present: bool
    power_state: str | None = None
    driver: str | None = None
    link: LinkState | None = None
    uuid: str | None = None
    nvml_status: str = "not read"  # ok, gpu_lost, reset_required, not_found, unavailable: <why>
    siblings: tuple[tuple[str, str | None], ...] = ()  # the GPU's other functions and their drivers
    read_errors: tuple[str, ...] = ()  # attributes of the function that could not be read, with the errno
    runtime_pm: str | None = None  # power/control: "on" or "auto" (runtime PM allowed); None where absent
    minor: int | None = None  # /dev/nvidia<minor>, from NVML; None where NVML could not say
    nvml_index: int | None = None  # NVML's (and CUDA's, with CUDA_DEVICE_ORDER=PCI_BUS_ID) device index


# Cycle outcomes. attempts = recovered + failed + hung; refused and skipped are not attempts.
RECOVERED, FAILED, HUNG, REFUSED, SKIPPED = "recovered", "failed", "hung", "refused", "skipped"
# The action ran, but a check could not look (NVML unavailable for an NVIDIA GPU, gpusoak's own
# child broke): neither recovered nor failed, and never counted as either.
INCONCLUSIVE = "inconclusive"
OUTCOMES = (RECOVERED, FAILED, HUNG, REFUSED, SKIPPED, INCONCLUSIVE)

# Findings on the GPU's identity after a cycle (verify.identity_findings): its /dev/nvidiaN minor or
# its NVML index is not the baseline's.
MINOR_CHANGED, INDEX_CHANGED = "minor_changed", "index_changed"

# An action's semantics version where a run does not name one: runs from before the versions existed
# ran every action in its first meaning (flr, pm_reset, bus_reset reset under the bound driver).
FIRST_SEMANTICS = 1


@dataclass(frozen=True)
class Finding:
    """A named reason a cycle did not recover (or was not attempted), with its evidence."""

    reason: str
    detail: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(**d)


@dataclass(frozen=True)
class CycleResult:
    run_id: str
    bdf: str
    uuid: str | None
    action: str
    cycle: int
    outcome: str
    started_at: str  # ISO 8601, UTC, wall clock
    duration_s: float  # action + verification, monotonic (or the simulator's clock)
    recovery_s: float | None = None  # action start -> every check passed; None unless recovered
    findings: tuple[Finding, ...] = ()
    checks: tuple[Check, ...] = ()
    events: tuple[KernelEvent, ...] = ()
    ladder: tuple[Finding, ...] = ()  # after a failure: each rung tried, and what it did
    load: dict[str, Any] | None = None  # the load before the reset (gpusoak.load.child.LoadSummary)
    post_check: dict[str, Any] | None = None  # the short load after recovery (a failed cycle: after the ladder's cure)
    recovered_by: str | None = None  # the rung that brought the GPU back; "reboot_required" if none did
    # The GPU's identity after the cycle, beside its UUID: what Slurm's gres.conf (File=/dev/nvidiaN)
    # and the Kubernetes device plugin name it by. None where it could not be read.
    minor: int | None = None
    nvml_index: int | None = None

    @property
    def attempted(self) -> bool:
        return self.outcome in (RECOVERED, FAILED, HUNG)

    @property
    def reason(self) -> str | None:
        """The first named reason, or None when the cycle recovered."""
        return self.findings[0].reason if self.findings else None

    def explain(self) -> str:
        lines = [f"{self.action} cycle {self.cycle} on {self.bdf}: {self.outcome}"]
        lines += [f"  {f.reason}: {f.detail}" for f in self.findings]
        lines += [f"  kernel: {e.text}" for e in self.events]
        lines += [f"  ladder {f.reason}: {f.detail}" for f in self.ladder]
        if self.recovered_by:
            lines.append(f"  recovered by: {self.recovered_by}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CycleResult:
        d = dict(d)
        if d.get("outcome") not in OUTCOMES:
            raise ValueError(f"unknown outcome {d.get('outcome')!r}")
        d["findings"] = tuple(Finding.from_dict(x) for x in d.get("findings", ()))
        d["checks"] = tuple(Check.from_dict(x) for x in d.get("checks", ()))
        d["events"] = tuple(KernelEvent.from_dict(x) for x in d.get("events", ()))
        d["ladder"] = tuple(Finding.from_dict(x) for x in d.get("ladder", ()))
        return cls(**d)


@dataclass(frozen=True)
class ActionStats:
    attempts: int
    successes: int
    lower_bound: float  # Wilson score interval, 95 %, lower end of the success rate
    recovery_p50_s: float | None
    recovery_p95_s: float | None
    recovery_max_s: float | None


@dataclass(frozen=True)
class GpuVerdict:
    bdf: str
    uuid: str | None
    gpu_class: str
    actions: dict[str, ActionStats]
    evidence: tuple[str, ...] = ()
    reliability: str = ""  # score.RELIABILITY_CLASSES
    reliability_reasons: tuple[str, ...] = ()
    sequences: dict[str, dict] = field(default_factory=dict)  # per action: cycles, outcome, the SPRT's state
    aer_events: int = 0  # AER events seen in this GPU's cycles (trends compare the rate)
    needs_reboot: bool = False  # nothing on the recovery ladder brought it back in some cycle


@dataclass(frozen=True)
class Verdict:
    hostname: str
    decision: str
    gpus: tuple[GpuVerdict, ...]
    evidence: tuple[str, ...] = field(default=())
    reliability: str = ""  # the node's worst GPU class
    decided_by: str = "fixed"  # fixed (the fixed-cycle rules) or the profile's decision rule


def to_dict(obj: Any) -> dict[str, Any]:
    """The one serialisation of every value type above (plain JSON types only)."""
    return dataclasses.asdict(obj)


# What NVML said of one GPU at one moment (gpusoak/host/nvml.py reads it; the gates judge it).
@dataclass(frozen=True)
class NvmlHealth:
    bdf: str
    status: str  # ok, gpu_lost, reset_required, not_found
    uuid: str | None = None
    values: dict[str, Any] = field(default_factory=dict)  # name -> value, or None when NA
    na: dict[str, str] = field(default_factory=dict)  # name -> why it is not available


# NVML_FI_DEV_GET_GPU_RECOVERY_ACTION's values (reference 2.4; gpusoak/host/nvml.py reads the field).
RECOVERY_ACTIONS = {0: "none", 1: "gpu_reset", 2: "node_reboot", 3: "drain_p2p", 4: "drain_and_reset",
                    5: "recover_imex_domain", 6: "bus_reset", 7: "system_reboot"}
