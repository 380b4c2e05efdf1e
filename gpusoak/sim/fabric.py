"""The NVLink fabric of a simulated NVSwitch node: each GPU's registration with Fabric Manager.

Facts modelled (NVML API reference, nvmlDeviceGetGpuFabricInfoV and nvmlGpuFabricInfo_v2_t,
https://docs.nvidia.com/deploy/nvml-api/structnvmlGpuFabricInfo__v2__t.html; NVIDIA Fabric Manager
user guide, https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/):

- ``state`` is the "current state of GPU registration process": NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
  (0), NOT_STARTED (1), IN_PROGRESS (2), COMPLETED (3); ``status`` is an nvmlReturn_t to be checked
  "only if state returns complete"; ``healthMask`` packs NVML_GPU_FABRIC_HEALTH_MASK_* fields.
- On an NVSwitch system Fabric Manager trains the NVLinks and adds each GPU to the fabric; until the
  GPU's registration has completed, CUDA initialisation fails with cudaErrorSystemNotReady, and it
  starts again after the GPU is reset or its driver re-probes it [U: the guide's wording on reset
  not re-checked here].

Inferences [I]: the registration takes NOT_STARTED_S then IN_PROGRESS_S of simulated time from the
reset or driver probe, and only while ``nvidia-fabricmanager`` is active (a node without it never
registers); NVML on a node without NVSwitches answers NOT_SUPPORTED for the call [U]; a healthy
GPU's mask has every field NOT_SUPPORTED (0) [I].
"""

from __future__ import annotations

import pynvml

NOT_STARTED_S = 1.0  # [I] registration not yet begun after a reset
IN_PROGRESS_S = 2.0  # [I] then link training and routing by Fabric Manager
FABRIC_MANAGER = "nvidia-fabricmanager"
NEVER = "never"  # a scenario GPU whose registration never completes
OUTCOMES = ("completes", NEVER)


def restart(kernel, st) -> None:
    """The GPU left the fabric: a reset, or the driver (re)probed it."""
    st.fabric_since = kernel.clock.monotonic()


def state(kernel, st) -> int:
    """NVML_GPU_FABRIC_STATE_* of one GPU now."""
    if not kernel.scenario.nvswitches:
        return pynvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
    if kernel.services.get(FABRIC_MANAGER) != "active":
        return pynvml.NVML_GPU_FABRIC_STATE_NOT_STARTED
    elapsed = kernel.clock.monotonic() - st.fabric_since
    if elapsed < NOT_STARTED_S:
        return pynvml.NVML_GPU_FABRIC_STATE_NOT_STARTED
    # "never": registered at boot, as every GPU is, but never again once it has left the fabric.
    left = st.fabric_since != float("-inf")
    if (st.spec.fabric == NEVER and left) or elapsed < NOT_STARTED_S + IN_PROGRESS_S:
        return pynvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS
    return pynvml.NVML_GPU_FABRIC_STATE_COMPLETED


def cuda_ready(kernel, st) -> bool:
    """CUDA can initialise on the GPU: no NVSwitch, or its registration completed."""
    return not kernel.scenario.nvswitches or state(kernel, st) == pynvml.NVML_GPU_FABRIC_STATE_COMPLETED
