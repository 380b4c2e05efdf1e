"""Function-level reset through sysfs, with ``reset_method`` narrowed to ``flr``.

Why narrow it: pci_reset_function() tries the enabled methods in order and moves on to the next
when one returns -ENOTTY, which is exactly what pcie_flr() returns when the function never becomes
ready. With the default list ("flr bus") a failed FLR would silently become a bus reset and the soak
would credit FLR with a recovery it did not make. The saved list is written back afterwards,
also after a failure.

Under a bound ``nvidia`` the reset runs with the slot unbound and bound back after
(gpusoak/actions/release.py): the driver registers no reset hooks, and a reset under it loses the
GPU. Semantics version 2 of flr, pm_reset and bus_reset (version 1 reset under the bound driver).
"""

from __future__ import annotations

import contextlib

from gpusoak.actions import release
from gpusoak.actions.base import (
    UNSUPPORTED,
    Action,
    Context,
    Step,
    fabric_refusals,
    refusals_common,
    write,
)
from gpusoak.errors import GpusoakError, Hung
from gpusoak.host.node import Node
from gpusoak.host.sysfs import RESET, RESET_METHOD
from gpusoak.model import Finding, PciAddress


class MethodReset(Action):
    """A reset through the function's ``reset`` file with one method selected."""

    method = ""
    semantics = 2  # 2: unbind the slot from nvidia, reset, bind back; 1: reset under the bound driver

    def method_refusals(self, node: Node, bdf: PciAddress) -> list[Finding]:
        fn = node.sysfs.function(bdf)
        methods = fn.reset_methods
        if methods is None:
            return [Finding(UNSUPPORTED, f"no reset_method file, so {self.method} cannot be chosen alone: the "
                            "kernel predates it (Linux < 5.15), or the function has no reset method at all")]
        if self.method not in methods:
            return [Finding(UNSUPPORTED, f"{self.method} is not among the enabled reset methods "
                            f"({' '.join(methods) or 'none'})")]
        if not fn.can_reset:
            return [Finding(UNSUPPORTED, "the kernel offers no reset file for this function")]
        return []

    def steps(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Step]:
        return release.steps(node, bdf, self.reset_steps(node, bdf))

    def reset_steps(self, node: Node, bdf: PciAddress) -> list[Step]:
        fn = node.sysfs.function(bdf)
        saved = " ".join(fn.reset_methods or ()) or "default"
        return [Step("write", str(fn.path / RESET_METHOD), self.method), Step("write", str(fn.path / RESET), "1"),
                Step("write", str(fn.path / RESET_METHOD), saved)]

    def perform(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        release.perform(node, bdf, ctx, lambda: self.reset(node, bdf, ctx), f"{self.method} reset")

    def reset(self, node: Node, bdf: PciAddress, ctx: Context) -> None:
        fn = node.sysfs.function(bdf)
        saved = " ".join(fn.reset_methods or ()) or "default"
        write(node, fn.path / RESET_METHOD, self.method, ctx, f"selecting {self.method}")
        try:
            write(node, fn.path / RESET, "1", ctx, f"{self.method} reset")
        except Hung:
            # The reset is still running in the kernel: a reset_method write now would race it.
            # state.restore puts the saved list back once the writer has returned.
            raise
        except BaseException:
            # The reset's own error is the finding; a failed restore must not hide it.
            with contextlib.suppress(GpusoakError):
                write(node, fn.path / RESET_METHOD, saved, ctx, "restoring reset_method")
            raise
        write(node, fn.path / RESET_METHOD, saved, ctx, "restoring reset_method")


class Flr(MethodReset):
    name = "flr"
    method = "flr"

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        return (refusals_common(node, bdf, ctx) or fabric_refusals(node, bdf, f"a sysfs {self.method} reset")
                or self.method_refusals(node, bdf) or release.refusals(node, bdf))


class PmReset(MethodReset):
    """D3hot and back to D0 (``reset_method`` = pm): a reset only where the function advertises
    No_Soft_Reset clear, which the kernel checks before it lists pm as a method."""

    name = "pm_reset"
    method = "pm"

    def refusals(self, node: Node, bdf: PciAddress, ctx: Context) -> list[Finding]:
        return (refusals_common(node, bdf, ctx) or fabric_refusals(node, bdf, f"a sysfs {self.method} reset")
                or self.method_refusals(node, bdf) or release.refusals(node, bdf))
