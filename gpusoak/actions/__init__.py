"""The reset actions (DESIGN.md, Actions). Each states its preconditions as refusals, lists the
exact steps it would take, and performs them through the node's seams with a deadline each."""

from gpusoak.actions import services
from gpusoak.actions.base import Action, Context, Step, refusals_common
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

__all__ = ["ACTIONS", "ACTION_SEMANTICS", "GPU_ACTIONS", "NODE_ACTIONS", "Action", "Context", "Step", "refusals_common",
           "services"]
