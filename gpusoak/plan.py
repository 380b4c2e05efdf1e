"""`gpusoak plan`: exactly what a run would do, and nothing done. Reads only."""

from __future__ import annotations

from typing import Any

from gpusoak.actions import ACTIONS, NODE_ACTIONS
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
        "gpus": [], "node_actions": [],
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


def render(plan: dict[str, Any]) -> str:
    lines = [f"plan for {plan['node']} ({plan['backend']}): {plan['cycles']} cycles of",
             *[f"  {o}" for o in plan["order"]]]
    if not plan["destructive_allowed"]:
        lines.append("  read-only: a real node is reset only with --destructive; this plan shows what that would do")
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
