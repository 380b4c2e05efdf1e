"""What every action shares: its name and scope, and the refusals common to all of them."""

from __future__ import annotations

from gpusoak.errors import GpusoakError
from gpusoak.host import procs
from gpusoak.host.node import Node
from gpusoak.model import Finding, PciAddress

# Refusal reasons (Finding.reason of a refused cycle).
NOT_ROOT = "not_root"
HELD = "held_by_process"
UNSUPPORTED = "method_unsupported"
NOT_PRESENT = "not_present"
NOT_AUTHORISED = "not_authorised"


class Action:
    name = ""
    scope = "gpu"  # or "node"

    def refusals(self, node: Node, bdf: PciAddress) -> list[Finding]:
        raise NotImplementedError

    def perform(self, node: Node, bdf: PciAddress, *, timeout_s: float) -> None:
        raise NotImplementedError


def refusals_common(node: Node, bdf: PciAddress) -> list[Finding]:
    """Refusals every GPU action shares: not root, absent, or a process holds the GPU."""
    out = []
    if not node.is_root:
        out.append(Finding(NOT_ROOT, "resets write sysfs control files: run as root"))
    if not node.sysfs.function(bdf).present:
        out.append(Finding(NOT_PRESENT, f"{bdf} is not in {node.sysfs.devices_dir}"))
        return out
    holders = gpu_holders(node, bdf)
    if holders:
        listed = ", ".join(holders)
        out.append(Finding(HELD, f"processes hold the GPU ({listed}); a held GPU blocks or breaks a reset"))
    return out


def gpu_holders(node: Node, bdf: PciAddress) -> list[str]:
    """PIDs holding this GPU, from NVML's process list and /proc/<pid>/fd links to /dev/nvidia<minor>."""
    found: dict[int, str] = {}
    minor = None
    if node.nvml is not None:
        try:
            h = node.nvml.handle(bdf)
            minor = node.nvml.call("nvmlDeviceGetMinorNumber", h)
            for p in node.nvml.call("nvmlDeviceGetComputeRunningProcesses", h) or []:
                found[int(p.pid)] = f"pid {p.pid} (NVML compute process)"
        except (GpusoakError, node.nvml.lib.NVMLError):
            pass  # a lost GPU has no processes NVML can list; /proc still tells
    if isinstance(minor, int):
        nodes = {str(node.dev_root / f"nvidia{minor}"), f"/dev/nvidia{minor}"}
        for h in procs.device_holders(nodes, node.proc_root):
            found.setdefault(h.pid, f"pid {h.pid} ({h.path} open)")
    return [found[pid] for pid in sorted(found)]
