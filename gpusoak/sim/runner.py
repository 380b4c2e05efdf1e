"""The simulated node's command runner: answers like the real programs, never runs anything.

A command the simulated node does not know answers as a shell does for a missing program (127),
so nothing a test asks for can reach this machine's own devices.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpusoak.host.commands import CommandResult
from gpusoak.sim.kernel import SimKernel


class SimRunner:
    def __init__(self, kernel: SimKernel) -> None:
        self._kernel = kernel
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        argv = tuple(argv)
        self.calls.append(argv)
        if argv == ("uname", "-r"):
            return CommandResult(argv, 0, self._kernel.scenario.kernel + "\n", "", 0.001)
        return CommandResult(argv, 127, "", f"{argv[0]}: command not found (simulated node)", 0.0)
