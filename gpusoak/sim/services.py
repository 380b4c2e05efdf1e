"""The simulated node's systemd services, and the device files the GPU services hold while active.

A service that attaches to GPUs holds their device files open for as long as it runs:

- ``nvidia-persistenced`` keeps each GPU initialised by holding its device file open ("clients
  attach to a GPU by opening its device file ... the daemon keeps one open": NVIDIA, Driver
  Persistence, persistence-daemon.html; reference 4.4). It opens ``/dev/nvidiactl`` and the
  ``/dev/nvidia<minor>`` of every GPU the driver drives when it starts; stopped, it closes them.
- DCGM's host engine (``nvidia-dcgm``, ``dcgm`` on older DGX OS) and ``dcgm-exporter`` (which
  embeds one) watch every GPU through NVML, and an NVML client attaches by opening the device
  files (reference section 6). NVIDIA's MIG user guide has ``nvsm`` and ``dcgm`` stopped before a
  MIG mode change for this reason ("In this specific DGX example, you would have to stop the nvsm
  and dcgm services").
- ``nvidia-fabricmanager`` and ``nvidia-imex`` talk to the driver through ``/dev/nvidiactl``
  [I: they hold the driver, so ``rmmod nvidia`` fails while they run]; they hold no one GPU here.

Every process of a unit sits in the unit's cgroup, which ``/proc/<pid>/cgroup`` names
(``0::/system.slice/<unit>.service``; Linux Documentation/admin-guide/cgroup-v2.rst,
"Processes"; systemd.service(5): each service runs in its own cgroup below system.slice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from gpusoak.sim.kernel import SimKernel

PERSISTENCED = "nvidia-persistenced"
# unit -> what it holds while active: every GPU bound to nvidia (and nvidiactl), or nvidiactl only.
HOLDS = {"nvidia-persistenced": "gpus", "nvidia-dcgm": "gpus", "dcgm": "gpus", "dcgm-exporter": "gpus",
         "nvidia-fabricmanager": "ctl", "nvidia-imex": "ctl"}
COMM = {"nvidia-persistenced": "nvidia-persiste", "nvidia-dcgm": "nv-hostengine", "dcgm": "nv-hostengine",
        "dcgm-exporter": "dcgm-exporter", "nvidia-fabricmanager": "nv-fabricmanag", "nvidia-imex": "nvidia-imex"}


def start(kernel: SimKernel, unit: str) -> None:
    """The unit is active: its process runs and opens what it holds (GPUs bound to nvidia now)."""
    kernel.services[unit] = "active"
    if unit not in HOLDS or unit in kernel.service_pids:
        return
    pid = kernel.procs.spawn(COMM[unit], unit=unit)
    kernel.service_pids[unit] = pid
    if "nvidia" not in kernel.modules:
        return  # the daemon starts, finds no driver and holds nothing (it would log and exit) [I]
    kernel.procs.open(pid, "nvidiactl")
    if HOLDS[unit] != "gpus":
        return
    for bdf in kernel.gpus:
        if kernel.driver_of(bdf) == "nvidia":
            kernel.procs.open(pid, f"nvidia{kernel.minor(bdf)}")
            if unit == PERSISTENCED:
                # nvidia-persistenced.c setup_devices: each device it opens is in persistence mode,
                # which nvidia-smi reports Enabled.
                kernel.gpus[bdf].health["persistence_mode"] = True


def stop(kernel: SimKernel, unit: str) -> None:
    """systemctl stop returns once the unit's processes have exited: their descriptors are closed.

    [I] systemctl waits for the stop job, which ends when the unit's processes are gone (or
    killed after TimeoutStopSec=); no stop that returns early (--no-block) is modelled."""
    kernel.services[unit] = "inactive"
    pid = kernel.service_pids.pop(unit, None)
    if pid is not None:
        kernel.procs.exit(pid)
        if unit == PERSISTENCED:
            # nvidia-persistenced.c shutdown_daemon: the daemon closes every device it holds as it
            # exits, so the GPUs are no longer persistent (nvidia-smi: Disabled).
            for st in kernel.gpus.values():
                st.health["persistence_mode"] = False


def boot(kernel: SimKernel) -> None:
    """The scenario's active services, started once the driver has probed the GPUs."""
    for unit, state in list(kernel.services.items()):
        if state == "active":
            start(kernel, unit)

