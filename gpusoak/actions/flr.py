"""Function-level reset through sysfs, with ``reset_method`` narrowed to ``flr``.

Why narrow it: pci_reset_function() tries the enabled methods in order and moves on to the next
when one returns -ENOTTY, which is exactly what pcie_flr() returns when the function never becomes
ready. With the default list ("flr bus") a failed FLR would silently become a bus reset and the soak
would credit FLR with a recovery it did not make. The saved list is written back afterwards,
also after a failure.
"""

from __future__ import annotations

import contextlib

from gpusoak.actions.base import UNSUPPORTED, Action, refusals_common
from gpusoak.errors import GpusoakError
from gpusoak.host.node import Node
from gpusoak.host.sysfs import RESET, RESET_METHOD
from gpusoak.model import Finding, PciAddress


class Flr(Action):
    name = "flr"
    scope = "gpu"

    def refusals(self, node: Node, bdf: PciAddress) -> list[Finding]:
        out = refusals_common(node, bdf)
        if out:
            return out
        fn = node.sysfs.function(bdf)
        methods = fn.reset_methods
        if methods is None:
            out.append(Finding(UNSUPPORTED, "this kernel has no reset_method file, so FLR cannot be "
                               "chosen alone (Linux >= 5.15 has it)"))
        elif "flr" not in methods:
            out.append(Finding(UNSUPPORTED, f"flr is not among the enabled reset methods ({' '.join(methods) or 'none'})"))
        elif not fn.can_reset:
            out.append(Finding(UNSUPPORTED, "the kernel offers no reset file for this function"))
        return out

    def writes(self, node: Node, bdf: PciAddress) -> list[tuple[str, str]]:
        """The sysfs writes, in order: what ``plan`` prints."""
        fn = node.sysfs.function(bdf)
        saved = " ".join(fn.reset_methods or ())
        return [(str(fn.path / RESET_METHOD), "flr"), (str(fn.path / RESET), "1"),
                (str(fn.path / RESET_METHOD), saved or "default")]

    def perform(self, node: Node, bdf: PciAddress, *, timeout_s: float) -> None:
        fn = node.sysfs.function(bdf)
        saved = " ".join(fn.reset_methods or ()) or "default"
        node.sysfs.write(fn.path / RESET_METHOD, "flr", timeout_s=timeout_s, what="selecting FLR")
        try:
            node.sysfs.write(fn.path / RESET, "1", timeout_s=timeout_s, what="function-level reset")
        except BaseException:
            # The reset's own error is the finding; a failed restore must not hide it.
            with contextlib.suppress(GpusoakError):
                self._restore(node, fn.path / RESET_METHOD, saved, timeout_s)
            raise
        self._restore(node, fn.path / RESET_METHOD, saved, timeout_s)

    @staticmethod
    def _restore(node: Node, path, saved: str, timeout_s: float) -> None:
        node.sysfs.write(path, saved, timeout_s=timeout_s, what="restoring reset_method")
