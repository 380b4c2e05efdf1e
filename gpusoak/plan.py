"""`gpusoak plan`: exactly what a run would do, and nothing done. Reads only."""

from __future__ import annotations

from typing import Any

from gpusoak.actions import ACTIONS, NODE_ACTIONS, services
from gpusoak.actions.base import slot_functions
from gpusoak.errors import GpusoakError
from gpusoak.host.node import Node
from gpusoak.model import PciAddress
from gpusoak.soak import SoakOptions


def make(node: Node, gpus: list[PciAddress], options: SoakOptions) -> dict[str, Any]:
    ctx = options.context_for(gpus)
    per_gpu = [a for a in options.actions if a not in NODE_ACTIONS]
    per_node = [a for a in options.actions if a in NODE_ACTIONS]
    out: dict[str, Any] = {
        "node": node.hostname, "backend": node.backend, "cycles": options.cycles,
        "destructive_allowed": node.simulated or options.destructive,
        "order": [f"{a}: each cycle on every GPU" for a in per_gpu] + [f"{a}: each cycle node-wide" for a in per_node],
        "gpus": [], "node_actions": [], "services": _services(node, ctx),
        "runtime_pm_off": _runtime_pm_auto(node, gpus),
    }
    for bdf in gpus:
        entry: dict[str, Any] = {"bdf": str(bdf), "actions": {}}
        for name in per_gpu:
            action = ACTIONS[name]
            refusals = action.refusals(node, bdf, ctx)
            entry["actions"][name] = {
                "refused": [f"{f.reason}: {f.detail}" for f in refusals],
                "steps": [] if refusals else [str(s) for s in action.steps(node, bdf, ctx)]}
        out["gpus"].append(entry)
    for name in per_node:
        action = ACTIONS[name]
        refusals = action.refusals(node, None, ctx)
        out["node_actions"].append({"action": name, "refused": [f"{f.reason}: {f.detail}" for f in refusals],
                                    "steps": [] if refusals else [str(s) for s in action.steps(node, None, ctx)]})
    return out


def _runtime_pm_auto(node: Node, gpus: list[PciAddress]) -> list[str]:
    """Functions whose power/control reads auto: the run writes on to them before the baseline and
    after each action (Soak.hold_d0), and puts auto back at the end."""
    out = []
    for bdf in gpus:
        if not node.sysfs.function(bdf).present:
            continue
        for f in slot_functions(node, bdf):
            try:
                if node.sysfs.function(f).runtime_pm == "auto":
                    out.append(str(f))
            except GpusoakError:
                continue
    return out


def _services(node: Node, ctx) -> dict[str, list[str]]:
    """The GPU services the run stops once before its first cycle and starts again after its last
    (the action steps below assume them stopped), the ones it keeps, and the fabric's, never stopped."""
    running = services.active(node, services.STOPPABLE, ctx.command_timeout_s)
    return {"stop_before_first_cycle": running if ctx.stop_services else [],
            "start_after_last_cycle": list(reversed(running)) if ctx.stop_services else [],
            "kept_running": [] if ctx.stop_services else running,
            "never_stopped": services.active(node, services.NEVER_STOPPED, ctx.command_timeout_s)}


def render(plan: dict[str, Any]) -> str:
    prof = plan.get("profile")
    if prof is None:
        head = f"{plan['cycles']} cycles of"
    elif prof.get("sequential"):
        head = f"profile {prof['name']}: up to {plan['cycles']} cycles (the sequential test stops each sooner) of"
    else:
        head = f"profile {prof['name']}: {plan['cycles']} cycles of"
    lines = [f"plan for {plan['node']} ({plan['backend']}): {head}", *[f"  {o}" for o in plan["order"]]]
    if not plan["destructive_allowed"]:
        lines.append("  read-only: a real node is reset only with --destructive; this plan shows what that would do")
    svc = plan.get("services") or {}
    for key, what in (("stop_before_first_cycle", "before the first cycle"), ("start_after_last_cycle", "after the last cycle")):
        if svc.get(key):
            verb = "stop" if key.startswith("stop") else "start"
            lines.append(f"{what}: " + "; ".join(f"systemctl {verb} {u}" for u in svc[key]))
    if svc.get("kept_running"):
        lines.append(f"kept running (--keep-services): {', '.join(svc['kept_running'])}; the actions they block are refused")
    if svc.get("never_stopped"):
        lines.append(f"never stopped (the fabric needs them): {', '.join(svc['never_stopped'])}")
    if plan.get("runtime_pm_off"):
        lines.append("runtime PM off for the run (power/control on; auto again at the end): "
                     + ", ".join(plan["runtime_pm_off"]))
    lines.append("after a failed cycle: the recovery ladder flr -> rebind -> bus_reset -> module_reload")
    for g in plan["gpus"]:
        lines.append("")
        lines.append(g["bdf"])
        for name, a in g["actions"].items():
            if a["refused"]:
                lines.append(f"  {name}: REFUSED: {'; '.join(a['refused'])}")
                continue
            lines.append(f"  {name}:")
            lines += [f"    {s}" for s in a["steps"]]
    for a in plan["node_actions"]:
        lines.append("")
        if a["refused"]:
            lines.append(f"node {a['action']}: REFUSED: {'; '.join(a['refused'])}")
            continue
        lines.append(f"node {a['action']}:")
        lines += [f"  {s}" for s in a["steps"]]
    return "\n".join(lines) + "\n"
