"""``nvidia-smi -r -i BDF``: the driver's own GPU reset (an FLR by default; reference 4.1).

Preconditions from the nvidia-smi documentation: root, no application on the device, and on Ampere
NVSwitch systems a running Fabric Manager (Hopper and later do not need it).
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


class GpuReset(Action):
    name = "gpu_reset"

    def argv(self, bdf: PciAddress) -> list[str]:
        return ["nvidia-smi", "-r", "-i", bdf.nvml_bus_id]

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        out = refusals_common(node, bdf, ctx)
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
        return [Step("command", " ".join(self.argv(bdf)))]

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        check(run(node, self.argv(bdf), ctx, "GPU reset"), "GPU reset", EXIT_MEANINGS)
