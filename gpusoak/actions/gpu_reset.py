"""``nvidia-smi -r -i BDF``: the driver's own GPU reset (an FLR by default; reference 4.1).

Preconditions from the nvidia-smi documentation: root, no application on the device, and on Ampere
NVSwitch systems a running Fabric Manager (Hopper and later do not need it).

Before Ampere, GPUs connected by NVLink must be reset together (nvidia-smi documentation, -r;
reference 4.1: "include all NVLink peers in the same command or it errors"):
a Volta or Turing GPU with active NVLink peers (nvmlDeviceGetNvLinkRemotePciInfo_v2) is reset as
one group, ``nvidia-smi -r -i A,B`` (a comma-separated -i list [U]), and every peer's
preconditions hold too.
"""

from __future__ import annotations

from gpusoak.actions.base import (
    FABRIC_MANAGER,
    Action,
    Context,
    Step,
    check,
    nvswitches,
    refusals_common,
    run,
    service_active,
)
from gpusoak.host.node import Node
from gpusoak.model import Finding, PciAddress

# nvidia-smi's documented exit codes.
EXIT_MEANINGS = {2: "bad argument", 3: "not supported", 4: "no permission", 6: "device not found",
                 9: "driver not loaded", 12: "NVML library missing", 15: "GPU has fallen off the bus",
                 255: "other error"}
NVML_DEVICE_ARCH_AMPERE = 7  # nvml.h nvmlDeviceArchitecture_t
NVLINK_GROUP = "nvlink_group"  # a finding's reason: a peer of the group refuses


class GpuReset(Action):
    name = "gpu_reset"

    def argv(self, bdf: PciAddress, peers: tuple[PciAddress, ...] = ()) -> list[str]:
        return ["nvidia-smi", "-r", "-i", ",".join(b.nvml_bus_id for b in (bdf, *peers))]

    def group(self, node: Node, bdf: PciAddress) -> tuple[PciAddress, ...]:
        """The NVLink peers reset with a pre-Ampere GPU (none from Ampere on, or without NVML)."""
        if node.nvml is None:
            return ()
        arch = node.nvml.architecture(bdf)
        if arch is None or arch >= NVML_DEVICE_ARCH_AMPERE:
            return ()
        gpus = set(node.gpus())
        return tuple(sorted(p for p in (node.nvml.nvlink_peers(bdf) or []) if p in gpus and p != bdf))

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        out = refusals_common(node, bdf, ctx)
        if out:
            return out
        for peer in self.group(node, bdf):
            out += [Finding(NVLINK_GROUP, f"NVLink peer {peer} is reset with it, and it refuses: {f.reason}: {f.detail}")
                    for f in refusals_common(node, peer, ctx)]
        if out:
            return out
        if self._needs_fabric_manager(node, bdf) and not service_active(node, "nvidia-fabricmanager", ctx):
            out.append(Finding(FABRIC_MANAGER, "an Ampere GPU on an NVSwitch system is reset only with "
                               "nvidia-fabricmanager running, and it is not"))
        return out

    def _needs_fabric_manager(self, node: Node, bdf: PciAddress) -> bool:
        if not nvswitches(node) or node.nvml is None:
            return False
        return node.nvml.architecture(bdf) == NVML_DEVICE_ARCH_AMPERE

    def steps(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Step]:
        return [Step("command", " ".join(self.argv(bdf, self.group(node, bdf))))]

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        argv = self.argv(bdf, self.group(node, bdf))
        check(run(node, argv, ctx, "GPU reset"), "GPU reset", EXIT_MEANINGS)
