"""The reset actions (DESIGN.md, Actions). Each states its preconditions as refusals, lists the
exact steps it would take, and performs them through the node's seams with a deadline each."""

from gpusoak.actions import services
from gpusoak.actions.base import Action, Context, Step, nvswitches, refusals_common
from gpusoak.actions.binding import Rebind, RemoveRescan, VfioCycle
from gpusoak.actions.bus_reset import BusReset
from gpusoak.actions.flr import Flr, PmReset
from gpusoak.actions.gpu_reset import GpuReset
from gpusoak.actions.module_reload import ModuleReload

ACTIONS: dict[str, Action] = {a.name: a for a in (
    Flr(), PmReset(), BusReset(), GpuReset(), Rebind(), VfioCycle(), RemoveRescan(), ModuleReload())}
GPU_ACTIONS = tuple(n for n, a in ACTIONS.items() if a.scope == "gpu")
NODE_ACTIONS = tuple(n for n, a in ACTIONS.items() if a.scope == "node")
ACTION_SEMANTICS: dict[str, int] = {n: a.semantics for n, a in ACTIONS.items()}
DEFAULT_ACTIONS = ("flr",)
# On an NVSwitch node flr and the other sysfs resets are refused (fabric_bypass): a default of flr
# there would test nothing. nvidia-smi -r and a module reload go through the driver, which
# re-registers the GPU with Fabric Manager (actions/base.py fabric_refusals).
NVSWITCH_DEFAULT_ACTIONS = ("gpu_reset", "module_reload")


def default_actions(node) -> tuple[str, ...]:
    """What a run does when it is not told: flr, or on an NVSwitch node gpu_reset and module_reload."""
    return NVSWITCH_DEFAULT_ACTIONS if nvswitches(node) else DEFAULT_ACTIONS

__all__ = ["ACTIONS", "ACTION_SEMANTICS", "DEFAULT_ACTIONS", "NVSWITCH_DEFAULT_ACTIONS", "default_actions", "GPU_ACTIONS", "NODE_ACTIONS", "Action", "Context", "Step", "refusals_common",
           "services"]
