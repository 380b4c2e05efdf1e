"""The reset actions. Each states its preconditions, refuses with a reason, and performs its
writes through the node's seams with a deadline."""

from gpusoak.actions.base import Action, refusals_common
from gpusoak.actions.flr import Flr

ACTIONS: dict[str, Action] = {a.name: a for a in (Flr(),)}

__all__ = ["ACTIONS", "Action", "Flr", "refusals_common"]
