"""How much node time a profile's run takes on a real node (`gpusoak plan --profile NAME`).

An estimate, never a measurement: every number it rests on is named in its output. One cycle on a
real node is its load, the action with its recovery until every check passes, the post-check and
the settle window (docs/verdict.md). The load, the post-check and the settle window are the
run's settings. How long a reset and its recovery take depends on the GPU, the driver and the
platform, and no source gives it: ``RESET_RECOVERY_S`` below is the one table of those
assumptions, each marked [U] (unconfirmed) with what it rests on. Measure a node's own with a short
run (result.json ``gpus[].actions.<action>.recovery_s``).

Not modelled: GPUs in parallel contending for the host (PCIe, CPU), a failure's recovery ladder,
and refusals of the moment (a holder, a service), which cost no reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gpusoak.actions import ACTIONS
from gpusoak.host.node import Node
from gpusoak.model import PciAddress
from gpusoak.profile import SUPPORTED, Profile
from gpusoak.schedule import supported_actions
from gpusoak.soak import SoakOptions
from gpusoak.verdict import refusals
from gpusoak.verdict.sprt import Sprt

U = "[U]"


@dataclass(frozen=True)
class Assumed:
    seconds: float
    basis: str
    mark: str = U


# Seconds from the start of an action until every check first passes, on a real node. The kernel's
# waits are floors; the rest (unbinding and binding nvidia: RM teardown and initialisation, GSP
# firmware boot on Turing and later, then the NVML query children) is an estimate.
RESET_RECOVERY_S: dict[str, Assumed] = {
    "flr": Assumed(8.0, "unbind nvidia, FLR, bind back; the kernel waits 100 ms after the FLR "
                        "(drivers/pci/pci.c pcie_flr); nvidia's re-initialisation estimated"),
    "pm_reset": Assumed(8.0, "unbind nvidia, D3hot and back to D0, bind back; the kernel waits d3hot_delay "
                             "each way (drivers/pci/pci.c pci_pm_reset); nvidia's re-initialisation estimated"),
    "bus_reset": Assumed(9.0, "unbind the slot, secondary bus reset, bind back; the kernel waits for the "
                              "secondary bus, 1 s or link active + 100 ms (drivers/pci/pci.c "
                              "pci_bridge_wait_for_secondary_bus); nvidia's re-initialisation estimated"),
    "gpu_reset": Assumed(10.0, "nvidia-smi -r: the driver's own reset and RM re-initialisation, estimated"),
    "rebind": Assumed(7.0, "unbind and bind nvidia: RM teardown and initialisation, estimated"),
    "vfio_cycle": Assumed(9.0, "bind vfio-pci (driver_override), then nvidia again, estimated"),
    "remove_rescan": Assumed(9.0, "remove, rescan the port's bus, nvidia's probe, estimated"),
    "module_reload": Assumed(45.0, "unload nvidia's modules and load them again: every GPU of the node "
                                   "re-initialised, estimated"),
}
CHILD_START = Assumed(2.0, "starting a load child: Python, CUDA initialisation and a context on the GPU, estimated")
UNKNOWN_ACTION = Assumed(10.0, "no estimate for this action: 10 s assumed")


def _seconds(s: float) -> str:
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def planned_actions(node: Node, gpus: list[PciAddress], profile: Profile, options: SoakOptions) -> tuple[str, ...]:
    """The actions a run of the profile plans on this node (as the plugin plans them)."""
    if profile.actions == SUPPORTED:
        return supported_actions(node, gpus, options.context_for(gpus), tuple(ACTIONS))
    return tuple(profile.actions)


def cycles_needed(profile: Profile) -> tuple[int, str]:
    """Cycles per GPU and action for a clean GPU, and why."""
    test = profile.sequential
    if test is None:
        return profile.cycles, f"fixed: {profile.cycles} cycles"
    clean = Sprt(test).cycles_to_accept()
    if clean > test.cap:
        return test.cap, f"the cap: a clean GPU needs {clean} for the sequential test, so it stays undecided"
    return clean, f"the sequential test accepts a clean GPU after {clean} (a failure needs more; at most {test.cap})"


def make(node: Node, gpus: list[PciAddress], profile: Profile, options: SoakOptions,
         carries_over: bool) -> dict[str, Any]:
    """The estimate as a dict (``gpusoak plan --json``'s ``estimate``). ``options``: the run's
    (load and post-check seconds, settle window) as on a real node."""
    ctx = options.context_for(gpus)
    planned = planned_actions(node, gpus, profile, options)
    applicable = supported_actions(node, gpus, ctx, planned) if planned else ()
    cycles, why = cycles_needed(profile)
    load, post, settle = options.load_seconds, options.post_check_seconds, options.settle_s
    child = CHILD_START.seconds
    n = len(gpus)
    rows = []
    per_gpu_s = {str(b): 0.0 for b in gpus}
    node_action_s = 0.0
    for name in applicable:
        action = ACTIONS[name]
        assumed = RESET_RECOVERY_S.get(name, UNKNOWN_ACTION)
        loads = (load + child if load > 0 else 0.0) + (post + child if post > 0 else 0.0)
        if action.scope == "node":
            # Each GPU is loaded, and post-checked, one after another; they settle together.
            cycle_s = n * loads + assumed.seconds + settle
            node_action_s += cycles * cycle_s
            on = n
        else:
            cycle_s = loads + assumed.seconds + settle
            on = 0
            for b in gpus:
                if not refusals.rules_out(f.reason for f in action.refusals(node, b, ctx)):
                    per_gpu_s[str(b)] += cycles * cycle_s
                    on += 1
        rows.append({"action": name, "scope": action.scope, "gpus": on, "cycles": cycles,
                     "reset_recovery_s": assumed.seconds, "basis": assumed.basis, "mark": assumed.mark,
                     "cycle_s": round(cycle_s, 1)})
    parallel_s = max(per_gpu_s.values(), default=0.0) + node_action_s
    serial_s = sum(per_gpu_s.values()) + node_action_s
    total = parallel_s if profile.parallel and n > 1 else serial_s
    out: dict[str, Any] = {
        "profile": profile.name, "gpus": n, "parallel": profile.parallel and n > 1,
        "cycles": cycles, "cycles_why": why,
        "per_cycle": {"load_s": load, "post_check_s": post, "settle_s": settle,
                      "child_start_s": child, "child_start_basis": CHILD_START.basis, "child_start_mark": CHILD_START.mark},
        "actions": rows, "node_s": {"parallel": round(parallel_s, 1), "serial": round(serial_s, 1)},
        "total_s": round(total, 1), "budget_s": profile.budget_s, "carries_over": carries_over,
        "cycles_per_run": None, "runs_needed": None, "nights": None,
    }
    if profile.budget_s and rows:
        out.update(_budgeted(profile, planned, rows, per_gpu_s, carries_over))
    return out


def _budgeted(profile: Profile, planned: tuple[str, ...], rows: list[dict], per_gpu_s: dict[str, float],
              carries_over: bool) -> dict[str, Any]:
    """Cycles per action one budgeted run reaches, and the runs (nights) each action's test needs,
    as the scheduler shares the budget: the GPU actions get their share (one per action planned),
    taken in turn; the node-wide ones the rest."""
    budget = profile.budget_s or 0.0
    share = len([a for a in planned if ACTIONS[a].scope == "gpu"]) / max(1, len(planned))
    gpu_rows = [r for r in rows if r["scope"] == "gpu"]
    node_rows = [r for r in rows if r["scope"] == "node"]
    parallel = profile.parallel and len(per_gpu_s) > 1
    per_run: dict[str, float] = {}
    if gpu_rows:
        round_s = sum(r["cycle_s"] for r in gpu_rows)  # one cycle of each action, in turn
        if not parallel:
            round_s *= max(1, len(per_gpu_s))  # one GPU after another
        per_run.update({r["action"]: budget * share / round_s for r in gpu_rows})
    if node_rows:
        rest = budget * (1 - share) if gpu_rows else budget
        per_run.update({r["action"]: rest / len(node_rows) / r["cycle_s"] for r in node_rows})
    runs = {r["action"]: math.ceil(r["cycles"] / per_run[r["action"]]) if per_run[r["action"]] else None for r in rows}
    return {"cycles_per_run": {a: min(r["cycles"], math.ceil(per_run[a])) for a, r in ((x["action"], x) for x in rows)},
            "runs_needed": runs, "nights": max((n for n in runs.values() if n), default=None) if carries_over else None}


def render(est: dict[str, Any]) -> str:
    pc = est["per_cycle"]
    mode = (f"{est['gpus']} GPUs in parallel" if est["parallel"] else
            f"{est['gpus']} GPUs one after another" if est["gpus"] > 1 else f"{est['gpus']} GPU")
    lines = ["", f"estimate of node time on a real node (profile {est['profile']}, {mode}):",
             f"  cycles per GPU and action: {est['cycles']}: {est['cycles_why']}",
             f"  one cycle: load {pc['load_s']:g} s + reset and recovery (below) + post-check {pc['post_check_s']:g} s "
             f"+ settle window {pc['settle_s']:g} s, and {pc['child_start_s']:g} s {pc['child_start_mark']} to start "
             "each load child",
             f"  {'action':<14}{'GPUs':>5}{'cycles':>8}{'reset+recovery':>16}{'per cycle':>11}  basis"]
    for r in est["actions"]:
        lines.append(f"  {r['action']:<14}{r['gpus']:>5}{r['cycles']:>8}{r['reset_recovery_s']:>12g} s {r['mark']:<3}"
                     f"{r['cycle_s']:>9g} s  {r['basis']}")
    if not est["actions"]:
        lines.append("  (no action applies to this node)")
    other = "serial" if est["parallel"] else "parallel"
    lines.append(f"  node time: {_seconds(est['total_s'])}"
                 + (f" ({other}: {_seconds(est['node_s'][other])})" if est["gpus"] > 1 else ""))
    if est.get("budget_s"):
        per_run = ", ".join(f"{a} {c}" for a, c in est["cycles_per_run"].items()) or "none"
        lines.append(f"  budget {_seconds(est['budget_s'])}: each run reaches about {per_run} cycles per GPU")
        needs = ", ".join(f"{a} {n}" for a, n in est["runs_needed"].items() if n)
        if est["carries_over"]:
            lines.append(f"  evidence carries over from night to night: the tests need about {est['nights']} night(s) "
                         f"at this budget ({needs})")
        elif any(n and n > 1 for n in est["runs_needed"].values()):
            lines.append(f"  nothing carries over (the profile keeps no history), and a test needs more than one run "
                         f"at this budget ({needs}): it stays undecided")
    lines.append("  times marked [U] are assumptions, not measurements (gpusoak/estimate.py); a short run on the "
                 "node measures its own")
    return "\n".join(lines) + "\n"
