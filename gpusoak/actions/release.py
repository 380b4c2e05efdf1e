"""Resets with the driver out of the way: unbind every function of the slot, reset, bind back.

Why: ``nvidia`` registers no ``err_handler`` (no ``reset_prepare``/``reset_done``; open modules,
``kernel-open/nvidia/nv-pci.c``, ``nv_pci_driver``), while the kernel's ``pci_reset_function``
(``drivers/pci/pci.c``, via ``pci_dev_save_and_disable``) resets the function under whatever driver
is bound and tells it only through those hooks. A reset under a live RM wipes state RM still uses
(gpusoak/sim/driver_reset.py has the sources and what the simulator infers from them). NVIDIA's own
path tears RM down before its FLR (``nv.c``: ``rm_shutdown_adapter``, then ``os_pci_trigger_flr``);
a VM host's passthrough path unbinds the GPU from ``nvidia`` before vfio-pci resets it. gpusoak
does the same: companions (audio, USB) unbound first and the graphics function last, as
``Rebind`` does, then the reset, then each function bound back to its driver, graphics first.

The bind-back runs also when the reset fails; a failed bind-back is a finding of its own
(``bind_back_failed``), carried beside the reset's error, never hiding it. After a hung write
nothing is bound back: the hung writer still holds the device's lock in the kernel
(``device_lock`` in ``pci_reset_function``, ``nv_pci_remove`` waiting for its usage count), so a
bind would hang behind it; the soak takes the GPU out of service and restores bindings at the end.
``nvidia-smi -r`` (``gpu_reset``) is the reset for a bound driver and does not come through here.
"""

from __future__ import annotations

from collections.abc import Callable

from gpusoak.actions.base import Context, Step, driver_path, slot_functions, write
from gpusoak.errors import GpusoakError, Hung, WriteFailed
from gpusoak.host.node import Node
from gpusoak.model import Finding, PciAddress

# Drivers that must not see a reset they were not told of (see above).
UNAWARE_DRIVERS = ("nvidia",)

BIND_BACK_FAILED = "bind_back_failed"
DRIVER_OVERRIDE_MISMATCH = "driver_override_mismatch"


def bound_slot(node: Node, bdf: PciAddress) -> list[tuple[PciAddress, str]]:
    """The slot's bound functions and their drivers, graphics first, when the graphics function is
    bound to a driver that must be out of the way for a reset; empty otherwise (reset as it is)."""
    if node.sysfs.function(bdf).driver not in UNAWARE_DRIVERS:
        return []
    return [(f, d) for f in slot_functions(node, bdf) if (d := node.sysfs.function(f).driver)]


def refusals(node: Node, bdf: PciAddress) -> list[Finding]:
    """A function whose driver_override names another driver cannot be bound back to its own:
    pci_match_device (drivers/pci/pci-driver.c) matches only the override's driver."""
    out = []
    for f, d in bound_slot(node, bdf):
        override = node.sysfs.function(f).driver_override
        if override is not None and override != d:
            out.append(Finding(DRIVER_OVERRIDE_MISMATCH, f"{f} is bound to {d} but its driver_override names "
                               f"{override}: it could not be bound back after the reset"))
    return out


def steps(node: Node, bdf: PciAddress, reset: list[Step]) -> list[Step]:
    bound = bound_slot(node, bdf)
    unbind = [Step("write", str(driver_path(node, d, "unbind")), str(f)) for f, d in reversed(bound)]
    bind = [Step("write", str(driver_path(node, d, "bind")), str(f)) for f, d in bound]
    return unbind + reset + bind


def perform(node: Node, bdf: PciAddress, ctx: Context, reset: Callable[[], None], what: str) -> None:
    """``reset()`` with the slot unbound from its driver, and every function bound back after."""
    bound = bound_slot(node, bdf)
    released: list[tuple[PciAddress, str]] = []
    try:
        for f, d in reversed(bound):
            write(node, driver_path(node, d, "unbind"), str(f), ctx, f"unbind {f} from {d} before the {what}")
            released.insert(0, (f, d))
        reset()
    except Hung:
        raise
    except Exception as err:
        failed = _bind_back(node, released, ctx, what)
        if failed and isinstance(err, GpusoakError):
            # The reset's error stays the error; the failed bind-back rides along as its own field.
            raise type(err)(err.detail, **{**err.fields, "bind_back": failed}) from err
        raise
    failed = _bind_back(node, released, ctx, what)
    if failed:
        raise WriteFailed(f"bind back after the {what}: {failed}", reason=BIND_BACK_FAILED, bind_back=failed)


def _bind_back(node: Node, released: list[tuple[PciAddress, str]], ctx: Context, what: str) -> str:
    """Bind each released function back, graphics first; what failed, as one line ('' if none).
    One failure does not stop the others: an audio function can come back without its GPU."""
    failed = []
    for f, d in released:
        try:
            write(node, driver_path(node, d, "bind"), str(f), ctx, f"bind {f} to {d} after the {what}")
        except Hung:
            raise
        except GpusoakError as err:
            failed.append(str(err))
    return "; ".join(failed)


def bind_back_findings(err: GpusoakError | None) -> list[Finding]:
    """The failed bind-back a reset's error carries, as a finding (none when it carries none)."""
    detail = getattr(err, "bind_back", None) if err is not None else None
    return [Finding(BIND_BACK_FAILED, detail)] if detail else []
