"""`gpusoak inspect`: what a node's GPUs are, how they sit, and what could be done to them. Read-only.

Nothing here writes: it reads sysfs, NVML and the kernel log, and asks each action for its refusals.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gpusoak import verify
from gpusoak.actions import ACTIONS, Context
from gpusoak.errors import GpusoakError
from gpusoak.host import kmsg
from gpusoak.host.node import Node
from gpusoak.host.sysfs import PciFunction
from gpusoak.model import PciAddress, pci_matches
from gpusoak.verdict import gates

EXIT_OK, EXIT_USAGE, EXIT_NO_GPU = 0, 2, 3


def inspect_node(node: Node, gpus: list[PciAddress] | None = None) -> dict[str, Any]:
    found = node.gpus()
    events, log_note = _kernel_events(node)
    return {
        "node": {"hostname": node.hostname, "backend": node.backend, "kernel": node.kernel,
                 "driver": node.driver_version(), "root": node.is_root,
                 "nvml": "available" if node.nvml is not None else f"unavailable: {node.nvml_unavailable}",
                 "kernel_log": log_note},
        "gpus": [_gpu(node, bdf, events) for bdf in (gpus or found)],
    }


def _kernel_events(node: Node):
    try:
        return kmsg.events(node.kmsg.records_since(-1)), "read"
    except GpusoakError as err:
        return [], f"unreadable: {err}"


def _gpu(node: Node, bdf: PciAddress, events) -> dict[str, Any]:
    fn = node.sysfs.function(bdf)
    if not fn.present:
        return {"bdf": str(bdf), "present": False}
    out: dict[str, Any] = {"bdf": str(bdf), "present": True,
                           "vendor_device": f"{fn.vendor or 0:04x}:{fn.device_id or 0:04x}",
                           "driver": fn.driver, "driver_override": fn.driver_override}
    methods = fn.reset_methods
    out["reset_methods"] = list(methods) if methods is not None else None
    if methods is None:
        out["reset_methods_na"] = "no reset_method file (Linux < 5.15): the kernel picks the method itself"
    out["reset_domain"] = _reset_domain(fn)
    out["iommu_group"] = {"group": fn.iommu_group, "members": [str(b) for b in fn.iommu_group_members()]}
    out["power"] = {"state": fn.power_state, "runtime_pm": fn.runtime_pm}
    out["link"] = _link(fn)
    out["aer"] = {kind: (None if (c := fn.aer(kind)) is None else c.total) for kind in ("correctable", "nonfatal", "fatal")}
    out["nvml"] = _nvml(node, bdf)
    out["recent_fatal_events"] = [
        {"line": e.line, "kind": e.kind, "xid": e.xid, "text": e.text}
        for e in events if pci_matches(e.pci, bdf) and verify.is_fatal(e)]
    out["actions"] = {name: _can_run(node, action, bdf) for name, action in ACTIONS.items()}
    return out


def _reset_domain(fn: PciFunction) -> dict[str, Any]:
    port = fn.upstream_port
    behind = fn.behind_upstream_port()
    foreign = [str(b) for b in behind if b.slot != fn.bdf.slot]
    return {"upstream_port": str(port) if port else None, "behind_port": [str(b) for b in behind],
            "bus_reset_safe": port is not None and not foreign,
            "why": ("no upstream port: the function sits on a root bus" if port is None
                    else f"also resets {', '.join(foreign)}" if foreign
                    else "only this GPU's own functions sit behind the port")}


def _link(fn: PciFunction) -> dict[str, Any]:
    link = fn.link
    flags = []
    if link.current_width is not None and link.max_width is not None and link.current_width < link.max_width:
        flags.append(f"width degraded: x{link.current_width} of x{link.max_width}")
    if link.current_speed and link.max_speed and link.current_speed != link.max_speed:
        # A GPU drops its link speed at idle to save power: worth noting, not proof of a fault.
        flags.append(f"speed {link.current_speed} below {link.max_speed} (normal at idle)")
    return {**asdict(link), "flags": flags}


def _nvml(node: Node, bdf: PciAddress) -> dict[str, Any]:
    if node.nvml is None:
        return {"status": f"unavailable: {node.nvml_unavailable}"}
    try:
        health = node.nvml.health(bdf)
    except GpusoakError as err:
        return {"status": f"error: {err}"}
    reading = gates.Reading(node.clock.monotonic(), health, None)
    gate = [asdict(g) for g in gates.evaluate(reading) if not g.name.endswith("_rate")]
    return {"status": health.status, "uuid": health.uuid, "values": health.values, "na": health.na, "gate": gate}


def _can_run(node: Node, action, bdf: PciAddress) -> dict[str, Any]:
    # As a destructive run would see it: the GPU services it stops before its first cycle do not count.
    refusals = action.refusals(node, None if action.scope == "node" else bdf, Context(stop_services=True))
    return {"can_run": not refusals, "why_not": [f"{f.reason}: {f.detail}" for f in refusals]}


def render_table(report: dict[str, Any]) -> str:
    n = report["node"]
    lines = [f"node {n['hostname']}  backend {n['backend']}  kernel {n['kernel']}  driver {n['driver'] or '-'}",
             f"  nvml: {n['nvml']}", f"  kernel log: {n['kernel_log']}", f"  root: {n['root']}"]
    if not report["gpus"]:
        lines.append("no NVIDIA GPU found on this node")
    for g in report["gpus"]:
        lines.append("")
        if not g["present"]:
            lines.append(f"{g['bdf']}: not present")
            continue
        nv = g["nvml"]
        lines.append(f"{g['bdf']}  {g['vendor_device']}  {nv.get('values', {}).get('name') or ''}  {nv.get('uuid') or ''}")
        lines.append(f"  driver            {g['driver'] or '(unbound)'}"
                     + (f"  override {g['driver_override']}" if g["driver_override"] else ""))
        lines.append(f"  reset methods     {' '.join(g['reset_methods']) if g['reset_methods'] is not None else 'NA: ' + g['reset_methods_na']}")
        d = g["reset_domain"]
        lines.append(f"  reset domain      port {d['upstream_port']}: {', '.join(d['behind_port'])}; "
                     f"bus reset {'safe' if d['bus_reset_safe'] else 'NOT safe'} ({d['why']})")
        lines.append(f"  iommu group       {g['iommu_group']['group']}: {', '.join(g['iommu_group']['members']) or '-'}")
        lines.append(f"  power             {g['power']['state']}  runtime PM {g['power']['runtime_pm']}")
        lk = g["link"]
        lines.append(f"  link              {lk['current_speed']} x{lk['current_width']} of {lk['max_speed']} "
                     f"x{lk['max_width']}" + (f"  [{'; '.join(lk['flags'])}]" if lk["flags"] else ""))
        lines.append("  AER               " + "  ".join(f"{k} {v if v is not None else 'NA'}" for k, v in g["aer"].items()))
        lines.append(f"  NVML              {nv['status']}")
        for gate in nv.get("gate", []):
            lines.append(f"    gate {gate['name']:<20} {gate['status']:<5} {gate['detail']}")
        for e in g["recent_fatal_events"]:
            lines.append(f"  kernel event      line {e['line']}: {e['text']}")
        for name, a in g["actions"].items():
            lines.append(f"  action {name:<10} " + ("can run" if a["can_run"] else "refused: " + "; ".join(a["why_not"])))
    return "\n".join(lines) + "\n"
