"""What was not tested cannot admit: the node's inventory against what the run tested.

The journal header records every NVIDIA GPU found on the bus at the start (``found``), the ones this
run soaked (``tested``), and the inventory the node kept from its previous run (``previous``, read
from the file named by ``--inventory``). From those:

- a GPU of the previous inventory that is not on the bus now is ``gpu_missing``: a failure of the
  node (it fell off the bus in the reboot, or was taken out without anyone updating the inventory);
- a GPU on the bus that this run did not test makes the run a ``subset``: whatever it found, it
  cannot admit the node, nor lift a quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gpusoak.model import GpuVerdict, Verdict
from gpusoak.verdict.score import (
    ADMIT,
    ADMIT_LONG_JOBS_ONLY,
    FAIL,
    HARDWARE,
    KEEP_QUARANTINED,
    QUARANTINE,
    REBOOT_CLASS,
    REBOOT_REQUIRED,
    SUBSET,
)

GPU_MISSING = "gpu_missing"
# The decisions a subset cannot give: it may find a fault, never prove the node good (not even for
# long jobs only).
ADMITTING = (ADMIT, ADMIT_LONG_JOBS_ONLY)


@dataclass(frozen=True)
class Coverage:
    found: tuple[str, ...]  # every NVIDIA GPU on the bus at the start
    tested: tuple[str, ...]  # the functions this run soaked
    previous: tuple[str, ...] | None  # the node's inventory from its previous run, if it kept one
    previous_source: str | None = None

    @property
    def untested(self) -> tuple[str, ...]:
        return tuple(b for b in self.found if b not in self.tested)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(b for b in self.previous or () if b not in self.found)

    def to_dict(self) -> dict[str, Any]:
        return {"found": list(self.found), "tested": list(self.tested), "untested": list(self.untested),
                "missing": list(self.missing),
                "previous": None if self.previous is None else {"source": self.previous_source,
                                                                  "gpus": list(self.previous)}}


def coverage(header: dict[str, Any]) -> Coverage | None:
    """The coverage a journal header records; None for a journal written before it did (its
    report says nothing about coverage rather than guess)."""
    inv = header.get("inventory")
    if not isinstance(inv, dict) or not isinstance(inv.get("found"), list):
        return None
    tested = [g.get("bdf") for g in header.get("gpus", []) if isinstance(g, dict)]
    prev = inv.get("previous")
    prev_gpus = prev.get("gpus") if isinstance(prev, dict) and isinstance(prev.get("gpus"), list) else None
    return Coverage(found=tuple(str(b) for b in inv["found"]), tested=tuple(str(b) for b in tested if b),
                    previous=None if prev_gpus is None else tuple(str(b) for b in prev_gpus),
                    previous_source=prev.get("source") if isinstance(prev, dict) else None)


def apply(v: Verdict, cov: Coverage | None) -> Verdict:
    """The verdict with what the run did not cover: missing GPUs fail the node, untested ones make
    an admitting decision a subset."""
    if cov is None:
        return v
    if cov.missing:
        source = f" ({cov.previous_source})" if cov.previous_source else ""
        why = (f"in the node's inventory from its previous run{source}, not on the bus now (taken out on "
               "purpose: remove its entry from that file)")
        lost = tuple(GpuVerdict(bdf, None, FAIL, {}, (f"{GPU_MISSING}: {why}",), reliability=HARDWARE,
                                reliability_reasons=(f"{GPU_MISSING}: {why}",)) for bdf in cov.missing)
        decision = v.decision if v.decision in (REBOOT_REQUIRED, KEEP_QUARANTINED) else (
            KEEP_QUARANTINED if v.decided_by == "readmission" else QUARANTINE)
        # A plain admit's evidence says every GPU recovered, which a missing one makes untrue.
        kept = () if v.decision == ADMIT else v.evidence
        evidence = tuple(f"{b} {GPU_MISSING}: {why}" for b in cov.missing) + kept
        reliability = HARDWARE if v.reliability != REBOOT_CLASS else v.reliability
        return replace(v, gpus=v.gpus + lost, decision=decision, evidence=evidence, reliability=reliability)
    if cov.untested and v.decision in ADMITTING:
        shown = ", ".join(cov.untested)
        return replace(v, decision=SUBSET, evidence=(
            f"only {len(cov.tested)} of the {len(cov.found)} GPUs on the bus were tested (not tested: {shown}): "
            "a subset run never admits the node",
            *v.evidence))
    return v
