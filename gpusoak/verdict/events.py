"""Which kernel events fail a cycle: the one list, read by the cycle's judgement (gpusoak/verify.py)
and by the verdict (gpusoak/verdict/score.py). Pure: no I/O."""

from __future__ import annotations

from gpusoak.host import xid
from gpusoak.model import KernelEvent

# The kernel events that fail a cycle by their kind alone (host/klog.py KINDS); an XID fails it by
# the catalog's action, an AER by its severity.
FATAL_KINDS = frozenset({"fell_off_bus", "flr_not_ready", "flr_failed", "reset_failed", "d3cold",
                         "rminit_failed", "msix_failed", "link_down"})


def is_fatal(event: KernelEvent) -> bool:
    """The one place that decides which kernel events fail a cycle."""
    if event.kind == "xid":
        return event.xid is not None and xid.fails_cycle(event.xid)
    if event.kind == "aer":
        return event.severity in ("nonfatal", "fatal")
    return event.kind in FATAL_KINDS


def event_reason(event: KernelEvent) -> str:
    return f"xid_{event.xid}" if event.kind == "xid" else event.kind


def is_fatal_reason(reason: str | None) -> bool:
    """Whether a finding's reason names an event ``is_fatal`` passed (``event_reason`` of it): the
    verdict reads a cycle's findings, so it asks here instead of keeping a list of its own. Only
    an uncorrectable AER becomes a finding, so "aer" is one."""
    if reason is None:
        return False
    if reason.startswith("xid_") and reason[4:].isdigit():
        return xid.fails_cycle(int(reason[4:]))
    return reason == "aer" or reason in FATAL_KINDS
