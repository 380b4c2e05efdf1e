"""A reset the GPU's driver was not told of: what a sysfs reset under a bound, live ``nvidia`` does.

INFERENCE, the whole of this module: no source states the outcome; it follows from these.

- Linux ``drivers/pci/pci.c``: ``pci_reset_function`` (what the sysfs ``reset`` file calls, via
  ``reset_store`` in ``pci-sysfs.c``) runs ``pci_dev_save_and_disable``, then
  ``__pci_reset_function_locked``, then ``pci_dev_restore``. ``pci_dev_save_and_disable`` calls
  the bound driver's ``err_handler->reset_prepare`` only if it has one, then clears the Command
  register to ``PCI_COMMAND_INTX_DISABLE`` (memory decode and bus mastering off under the driver);
  ``pci_dev_restore`` puts config space back and calls ``err_handler->reset_done`` only if present.
  The bus routes (``pci_reset_bus``, the bridge's ``reset_subordinate``) do the same per device
  through ``pci_bus_save_and_disable`` / ``pci_bus_restore``.
- NVIDIA open-gpu-kernel-modules 595.45.04 ``kernel-open/nvidia/nv-pci.c``: ``struct pci_driver
  nv_pci_driver`` sets ``name``, ``id_table``, ``probe``, ``remove``, ``shutdown``,
  ``driver_managed_dma``, ``driver.pm`` and ``driver.probe_type`` — no ``err_handler`` at all, so
  no ``reset_prepare``/``reset_done``: RM is never told that the PCI core reset the GPU.
- ``kernel-open/nvidia/nv.c``: the driver's own reset path tears RM down first
  (``nv_shutdown_adapter`` → ``rm_shutdown_adapter``) and only then calls ``os_pci_trigger_flr``
  (``NV_FLAG_TRIGGER_FLR``), i.e. RM never expects the GPU to be reset under it.

So the FLR (or bus reset) wipes engine, falcon and framebuffer state that RM still believes in.
On GSP parts (the open modules run GSP on Turing and later: README "Compatible GPUs", "must be used
with GSP firmware") the GSP firmware itself is wiped, RM's next RPC to it times out, and RM treats
the GPU as lost until the driver is reloaded: NVML answers GPU_IS_LOST. The kernel-log line is an
Xid in the format of ``src/nvidia/src/kernel/gpu/gsp/kernel_gsp.c`` (``_kgspLogRpcTimeout``,
"Timeout after %llus of waiting for RPC response from GPU%d GSP! ..."); which Xid a real node
prints is not known, so no test asserts the number. On older (pre-GSP) parts RM drives the engines
itself: after the reset the function answers, its link retrains and its driver link stays, so it
looks recovered; RM's first use of it afterwards (an NVML read, a CUDA context) finds engines in
their reset state and the GPU is lost from then on (again an Xid line; the number is chosen here).

What clears it: for a GSP part only unloading the module (``rmmod nvidia`` frees RM's state of
every GPU), a rebind is not enough — the strict reading of "lost until a driver reload". For a
pre-GSP part that nothing used yet, an unbind (``nv_pci_remove`` tears RM's state of the device
down) makes the next probe start from the reset hardware, as it would after any FLR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from gpusoak.sim.kernel import GpuState, SimKernel

# Architectures whose RM runs on the GPU's GSP with the open modules (Turing and later).
GSP_ARCHS = ("turing", "ampere", "ada", "hopper", "blackwell")
PRE_GSP_ARCHS = ("kepler", "maxwell", "pascal", "volta")
ARCHS = PRE_GSP_ARCHS + GSP_ARCHS
PRE_AMPERE = ARCHS[:ARCHS.index("ampere")]  # NVLink peers reset together with nvidia-smi -r

# The Xid numbers are a choice, not a fact (see above): 119 is GSP_RPC_TIMEOUT and 62 the PMU
# (an internal micro-controller) halt, the catalog entries that fit a falcon reset under RM.
GSP_LOST_XID = 119
PRE_GSP_LOST_XID = 62


def unaware_reset(kernel: SimKernel, st: GpuState) -> None:
    """A reset that succeeded at the PCI level while ``nvidia`` was bound and live."""
    if st.spec.arch in PRE_GSP_ARCHS:
        st.rm_stale = True  # looks recovered; the next use finds out
        return
    lose(kernel, st, GSP_LOST_XID, f"Timeout after 6s of waiting for RPC response from GPU{kernel.minor(st.spec.bdf)} "
         "GSP! Expected function 76 (GSP_RM_CONTROL) sequence 0 (0x0 0x0).")


def use(kernel: SimKernel, st: GpuState) -> bool:
    """RM touches the GPU (an NVML query, a CUDA context, nvidia-smi): False when it is lost.
    A pre-GSP GPU reset under RM is found out here, once, with its kernel-log line."""
    if st.rm_stale:
        lose(kernel, st, PRE_GSP_LOST_XID, "Internal micro-controller halt")
    return not st.rm_lost


def lose(kernel: SimKernel, st: GpuState, xid: int, text: str) -> None:
    st.rm_stale = False
    st.rm_lost = True
    kernel.xid(st.spec.bdf, xid, text)


def unbound(st: GpuState) -> None:
    """nv_pci_remove ran: RM's state of a pre-GSP device that nothing used yet is gone with it."""
    st.rm_stale = False


def module_unloaded(st: GpuState) -> None:
    """rmmod nvidia: RM's state of every GPU is freed; the next load starts afresh."""
    st.rm_stale = False
    st.rm_lost = False
