"""Health gates: NVML and AER readings that disqualify a GPU, before a soak and after each cycle.

Defaults follow DCGM's published limits (NVIDIA DCGM, dcgmlib dcgm_gpu_hardware_limits.h):
DCGM_LIMIT_MAX_RETIRED_PAGES 63 (SBE + DBE retired pages), DCGM_LIMIT_MAX_RETIRED_PAGES_SOFT_LIMIT 15
(DBE retired pages), DCGM_LIMIT_MAX_PCIREPLAY_RATE 8 per minute ("the maximum recommended by RM").
The uncorrectable-remap warning at 512 and the corrected-AER rate are gpusoak's own defaults: DCGM
publishes no limit for them. Every limit can be changed with a TOML file (``--gates FILE``, read by gpusoak/gates.py).
A reading NVML cannot give is a skipped gate with its reason, never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from gpusoak.errors import UsageError
from gpusoak.model import RECOVERY_ACTIONS, NvmlHealth

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


@dataclass(frozen=True)
class GateLimits:
    retired_pages_max: int = 63  # fail at >= (SBE + DBE)
    retired_pages_dbe_max: int = 15  # fail at >
    remapped_uncorrectable_warn: int = 512  # warn at >=
    pcie_replay_per_min: float = 8.0  # fail above; DCGM applies one limit to every generation and width
    aer_corrected_per_min: float = 60.0  # fail above, on the GPU's own aer_dev_correctable counter
    min_interval_s: float = 10.0  # rates need two readings at least this far apart

    @classmethod
    def from_table(cls, table: dict[str, Any], source: str = "") -> GateLimits:
        """Limits from a TOML table (``[gates]`` or the file's top level); unknown names and
        values of the wrong type are usage errors, naming ``source``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise UsageError(f"unknown gate limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**{k: type(getattr(cls, k))(v) for k, v in table.items()})
        except (TypeError, ValueError) as err:
            raise UsageError(f"bad gate limit: {err}", path=source) from err


@dataclass(frozen=True)
class Reading:
    """What the gates look at, taken at one moment."""

    at_s: float  # monotonic (or simulated) seconds
    nvml: NvmlHealth | None
    aer_corrected_total: int | None


@dataclass(frozen=True)
class Gate:
    name: str
    status: str  # pass, fail, warn, skip
    detail: str


def _value(reading: Reading, key: str) -> tuple[Any, str | None]:
    if reading.nvml is None:
        return None, "NVML unavailable"
    if reading.nvml.status != "ok":
        return None, f"NVML: {reading.nvml.status}"
    value = reading.nvml.values.get(key)
    return (value, None) if value is not None else (None, reading.nvml.na.get(key, "not read"))


def evaluate(now: Reading, before: Reading | None = None, limits: GateLimits = GateLimits()) -> list[Gate]:
    """Static gates on ``now``; rate gates on the change since ``before``."""
    out: list[Gate] = []

    def static(name: str, keys: tuple[str, ...], judge) -> None:
        got = [_value(now, k) for k in keys]
        missing = [why for _, why in got if why]
        if missing:
            out.append(Gate(name, SKIP, f"cannot look: {missing[0]}"))
        else:
            out.append(Gate(name, *judge(*[v for v, _ in got])))

    static("retired_pages", ("retired_pages_sbe", "retired_pages_dbe"), lambda sbe, dbe: (
        (FAIL, f"{sbe + dbe} retired pages (limit {limits.retired_pages_max})") if sbe + dbe >= limits.retired_pages_max
        else (FAIL, f"{dbe} double-bit retired pages (limit {limits.retired_pages_dbe_max})") if dbe > limits.retired_pages_dbe_max
        else (PASS, f"{sbe} SBE + {dbe} DBE retired pages")))
    static("retirement_pending", ("retired_pages_pending",), lambda p: (
        (FAIL, "page retirement pending: a reset or reboot is needed") if p else (PASS, "none pending")))
    # A remap that failed is the memory's fault (hardware-investigation, score.reliability reads the
    # gate's name); one pending only needs the reset the soak makes.
    static("row_remap_failure", ("remapped_rows_failure",), lambda failure: (
        (FAIL, "row remap failure: the GPU could not remap a row") if failure else (PASS, "no row remap failure")))
    static("row_remap", ("remapped_rows_pending", "remapped_rows_uncorrectable"),
           lambda pending, unc: (
               (FAIL, "row remap pending: a reset is needed to remap") if pending
               else (WARN, f"{unc} uncorrectable remapped rows (warn at {limits.remapped_uncorrectable_warn})")
               if unc >= limits.remapped_uncorrectable_warn
               else (PASS, f"{unc} uncorrectable remapped rows")))
    static("ecc_dbe_volatile", ("ecc_uncorrected_volatile",), lambda n: (
        (FAIL, f"{n} uncorrectable ECC errors since the driver loaded") if n else (PASS, "no uncorrectable ECC errors")))
    static("recovery_action", ("recovery_action",), lambda a: (
        (FAIL, f"NVML recovery action {RECOVERY_ACTIONS.get(a, a)}") if a else (PASS, "recovery action none")))
    out.extend(_rates(now, before, limits))
    return out


def _rates(now: Reading, before: Reading | None, limits: GateLimits) -> list[Gate]:
    if before is None or now.at_s - before.at_s < limits.min_interval_s:
        why = "needs two readings at least " f"{limits.min_interval_s:g} s apart"
        return [Gate("pcie_replay_rate", SKIP, why), Gate("aer_corrected_rate", SKIP, why)]
    minutes = (now.at_s - before.at_s) / 60.0
    out = []
    (a, why_a), (b, why_b) = _value(now, "pcie_replay_count"), _value(before, "pcie_replay_count")
    if why_a or why_b:
        out.append(Gate("pcie_replay_rate", SKIP, f"cannot look: {why_a or why_b}"))
    else:
        rate = (a - b) / minutes
        out.append(Gate("pcie_replay_rate", FAIL if rate > limits.pcie_replay_per_min else PASS,
                        f"{rate:.1f} PCIe replays/min (limit {limits.pcie_replay_per_min:g})"))
    if now.aer_corrected_total is None or before.aer_corrected_total is None:
        out.append(Gate("aer_corrected_rate", SKIP, "cannot look: no aer_dev_correctable in sysfs"))
    else:
        rate = (now.aer_corrected_total - before.aer_corrected_total) / minutes
        out.append(Gate("aer_corrected_rate", FAIL if rate > limits.aer_corrected_per_min else PASS,
                        f"{rate:.1f} corrected AER errors/min (limit {limits.aer_corrected_per_min:g})"))
    return out
