"""What a refused action means for the verdict: one table, for every refusal reason.

An action refused on every cycle for a reason of the hardware or the node's build
(``NOT_APPLICABLE``) does not apply to that GPU: it owes no evidence, neither passes nor holds the
GPU back, and a profile leaves it out of its plan. Any other refusal (``RETEST``) is a fact of this
moment (a process holds the GPU, a service runs, the run was not allowed to reset, gpusoak's own
child failed): the action stays in the plan and in the reports as refused, and what it would have
shown is missing, so the GPU cannot pass and the node cannot be admitted. A reason this table does
not know is ``RETEST``: a refusal nobody classed has not shown anything.
"""

from __future__ import annotations

NOT_APPLICABLE, RETEST = "not_applicable", "retest"
# Two outcomes that are no refusal of the action (gpusoak/actions/base.py and gpusoak/soak.py
# give them; the sequence reads them here).
BUS_BUSY = "bus_busy"  # the bus lock stayed busy (EAGAIN twice): the bus reset did not run; the cycle is skipped
LOAD_CHARGED = "load_failed_after_previous_cycle"  # the load before this reset failed: the previous cycle's doing

# reason: (meaning, why). The reasons are the Finding.reason strings of refused cycles
# (gpusoak/actions/base.py, gpusoak/mig.py, gpusoak/soak.py, gpusoak/load/).
TABLE: dict[str, tuple[str, str]] = {
    # The part or the node's build rules the action out, on every cycle of any run.
    "method_unsupported": (NOT_APPLICABLE, "the device or the kernel cannot reset it this way (a quirk, no FLR capability)"),
    "shared_reset_domain": (NOT_APPLICABLE, "the reset would also reset other devices: the slot's wiring"),
    "iommu_group": (NOT_APPLICABLE, "the IOMMU group holds other devices: the platform's grouping"),
    "fabric_bypass": (NOT_APPLICABLE, "a sysfs reset on an NVSwitch node bypasses Fabric Manager; gpu_reset applies"),
    "fabric_service_running": (NOT_APPLICABLE, "Fabric Manager or IMEX runs, and gpusoak never stops them"),
    # This moment, this run's options, or gpusoak itself: the evidence is missing.
    "fabric_manager_needed": (RETEST, "the NVSwitch fabric needs Fabric Manager for this reset, and it is not running"),
    "nvlink_group": (RETEST, "an NVLink peer of the GPU could not be reset with it"),
    "not_root": (RETEST, "run as root"),
    "not_authorised": (RETEST, "the run was read-only: pass --destructive"),
    "held_by_process": (RETEST, "a process held the GPU"),
    "service_active": (RETEST, "a GPU service ran (--keep-services)"),
    "module_in_use": (RETEST, "something outside gpusoak keeps the module in use"),
    "held_by_module": (RETEST, "another module uses one the reload would unload"),
    "module_not_loaded": (RETEST, "the module to reload is not loaded"),
    "driver_shared": (RETEST, "the reload would unbind functions outside the run: run on every GPU"),
    "driver_mismatch": (RETEST, "the module on disk is not the loaded one: reboot onto it first"),
    "cannot_reload": (RETEST, "modprobe could not load a module back"),
    "not_bound": (RETEST, "the GPU was bound to no driver"),
    "not_present": (RETEST, "the function was not on the bus when the cycle began"),
    "display_attached": (RETEST, "a display is attached"),
    "device_in_use": (RETEST, "the node keeps a file system, swap or interface on the device"),
    "bus_busy": (RETEST, "the PCI bus lock stayed busy"),
    "cannot_look": (RETEST, "a holder check could not read what it needs"),
    "gpusoak_holds_device": (RETEST, "gpusoak's own process held a device file: gpusoak's bug"),
    "mig_enabled": (RETEST, "MIG is on: pass --allow-mig to soak it"),
    "mig_mode_pending": (RETEST, "a MIG mode change is pending: reboot or reset it first"),
    "mig_unknown": (RETEST, "the MIG mode could not be read"),
}


def meaning(reason: str | None) -> str:
    """NOT_APPLICABLE or RETEST for a refusal reason (RETEST for one the table does not know)."""
    return TABLE.get(reason or "", (RETEST, ""))[0]


def not_applicable(reason: str | None) -> bool:
    return meaning(reason) == NOT_APPLICABLE


def rules_out(reasons) -> bool:
    """A refusal with several findings rules the action out if any of them does: the build's fact
    holds whatever else was in the way at that moment."""
    return any(not_applicable(r) for r in reasons)


NOT_APPLICABLE_REASONS = frozenset(r for r, (m, _) in TABLE.items() if m == NOT_APPLICABLE)
