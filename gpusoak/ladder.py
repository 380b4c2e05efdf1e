"""The recovery ladder: after a failed cycle, escalate until the GPU is back, and say which rung did it.

    flr -> rebind -> bus_reset (only where isolated) -> module_reload -> reboot required

Each rung is refused like any action (a rung that cannot run is recorded with its reason and
skipped). After each rung the GPU's saved bindings are put back (a failed vfio cycle may leave it
unbound) and recovery is verified as after any cycle. After the rung that brought it back, the
post-check loads the GPU (where the run has one), as after any recovered cycle: nvidia-smi's
documentation recommends "that the health of each reset GPU be verified before further use". A GPU
that nothing brings back needs a reboot and is taken out of the run.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, NamedTuple

from gpusoak import state as node_state
from gpusoak import verify
from gpusoak.actions import ACTIONS
from gpusoak.errors import GpusoakError, Hung
from gpusoak.model import Finding, PciAddress

if TYPE_CHECKING:  # pragma: no cover
    from gpusoak.soak import Soak

RUNGS = ("flr", "rebind", "bus_reset", "module_reload")
REBOOT_REQUIRED = "reboot_required"


class Climb(NamedTuple):
    rungs: tuple[Finding, ...]  # each rung tried, and what it did
    recovered_by: str  # the rung that brought the GPU back, or REBOOT_REQUIRED
    post_check: dict[str, Any] | None = None  # the load check after that rung (None: the run has none)


def climb(soak: Soak, bdf: PciAddress) -> Climb:
    """Try each rung in turn: what each did, the rung that worked (or reboot_required), and the
    post-check after it. The post-check's result is evidence for the verdict (score.reliability);
    it does not move the ladder on, which judges the GPU back as after any cycle."""
    node, ctx = soak.node, soak.ctx
    record: list[Finding] = []
    for rung in RUNGS:
        if rung == "module_reload" and not soak.options.ladder_module_reload:
            record.append(Finding(rung, "skipped: not allowed (--no-ladder-module-reload)"))
            continue
        action = ACTIONS[rung]
        target = None if action.scope == "node" else bdf
        failed = ""
        # A node-wide rung waits until no other GPU's cycle runs (the scheduler's node gate), and
        # only then looks for holders: until then other GPUs' load children hold nvidiactl and uvm.
        with soak.exclusive() if action.scope == "node" else contextlib.nullcontext():
            refusals = action.refusals(node, target, ctx)
            if rung == "rebind" and refusals and refusals[0].reason == "not_bound":
                refusals = []  # unbound after the failure: binding it back is this rung's whole job
            cursor = node.kmsg.cursor()
            try:
                if not refusals and not (rung == "rebind" and node.sysfs.function(bdf).driver is None):
                    action.perform(node, target, ctx)
            except Hung as err:
                record.append(Finding(rung, f"hung: {err}"))
                return Climb(tuple(record), REBOOT_REQUIRED)
            except GpusoakError as err:
                failed = f"{err}; "  # verified all the same: the GPU may be back regardless
        if refusals:
            record.append(Finding(rung, "skipped: " + "; ".join(f"{f.reason}: {f.detail}" for f in refusals)))
            continue
        if soak.saved_state is not None:
            node_state.restore(node, soak.saved_state, ctx, only={str(b) for b in _functions(soak, bdf)})
        soak.hold_d0(bdf)  # a binding put back to vfio-pci allows runtime PM again
        poll = verify.await_recovery(node, bdf, soak.baselines[bdf], cursor, soak.options.recovery_deadline_s,
                                     soak.options.settle_s)
        if poll.recovered:
            record.append(Finding(rung, "recovered"))
            return Climb(tuple(record), rung, soak.post_check(bdf)[0])
        why = "; ".join(f"{c.name}: {c.detail}" for c in poll.checks if c.status == verify.FAIL)
        why = "; ".join([*(e.text for e in poll.fatal), why]).strip("; ")
        record.append(Finding(rung, f"not recovered: {failed}{why}"))
    return Climb(tuple(record), REBOOT_REQUIRED)


def _functions(soak: Soak, bdf: PciAddress) -> list[str]:
    return [bdf_text for bdf_text, _ in ((str(bdf), None), *soak.baselines[bdf].siblings)]
