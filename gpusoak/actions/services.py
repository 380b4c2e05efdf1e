"""The node's GPU services: which ones gpusoak stops for a destructive run, and which it never stops.

Services that hold GPUs open block or break every reset: nvidia-persistenced holds each GPU's
device file (NVIDIA, Driver Persistence: "the daemon keeps one open"; reference 4.4), DCGM's host
engine and NVSM attach through NVML (NVIDIA MIG user guide: "you would have to stop the nvsm and
dcgm services" before a GPU reset or MIG change), and `nvidia-smi -r` refuses while any client,
monitoring ones included, holds the GPU (nvidia-smi documentation). So a destructive run stops the
active ones once, before its first cycle, and starts them again at the end (``gpusoak/soak.py``;
state.json names them so ``gpusoak restore`` starts them after a crash). ``--keep-services``
keeps them running and turns them into a refusal that names them.

``nvidia-fabricmanager`` and ``nvidia-imex`` are never stopped: on NVSwitch systems the fabric
and on IMEX domains the cross-node memory export depend on them (NVIDIA Fabric Manager user guide;
NVIDIA IMEX guide). An action they would block is refused, saying so.

A holder belongs to a service when its ``/proc/<pid>/cgroup`` puts it in the unit's cgroup
(``0::/system.slice/<unit>.service``: Linux Documentation/admin-guide/cgroup-v2.rst; every process
of a service, not only its main PID, runs in that cgroup: systemd.service(5), systemd.exec(5)).
"""

from __future__ import annotations

from pathlib import Path

from gpusoak.host.node import Node

# Stopped for a destructive run, in this order (the monitors first, persistenced last) and started
# again in the reverse order. Names as NVIDIA documents them: DCGM's packaged unit nvidia-dcgm and
# DGX OS's dcgm (DCGM user guide; MIG user guide); dcgm-exporter where it runs as a host service;
# NVSM's nvsm (MIG user guide) and the NVSM API services (NVSM user guide 20.09, "Verifying NVSM API
# Services"); the vGPU manager's nvidia-vgpu-mgr and nvidia-vgpud (NVIDIA vGPU software user guide).
STOPPABLE = ("dcgm-exporter", "nvidia-dcgm", "dcgm", "nvsm", "nvsm_api_gateway",
             "nvsm_api_gateway-mqtt", "nvsm_api_gateway-selwatcher", "nvsm_api_gateway-plugin-memory",
             "nvsm_api_gateway-plugin-environment", "nvidia-vgpu-mgr", "nvidia-vgpud", "nvidia-persistenced")
# Never stopped by gpusoak: the NVSwitch fabric and the IMEX domain need them.
NEVER_STOPPED = ("nvidia-fabricmanager", "nvidia-imex")
ALL = STOPPABLE + NEVER_STOPPED


def active(node: Node, units: tuple[str, ...], timeout_s: float) -> list[str]:
    """The active ones among ``units``, in one ``systemctl is-active UNIT...``: it prints one state a
    line, in order ("inactive" for a unit that does not exist), and exits 0 when any is active
    (systemctl(1)). Without systemctl (a container) nothing is known to be active; the holder scan
    still finds the services' processes."""
    r = node.runner.run(["systemctl", "is-active", *units], timeout_s=timeout_s)
    states = r.stdout.split()
    if len(states) != len(units):
        return []
    return [u for u, state in zip(units, states, strict=True) if state == "active"]


def unit_of(node: Node, pid: int) -> str | None:
    """The systemd service a process runs in, from its cgroup path (v2, or v1's name=systemd
    hierarchy), or None (a login session, a container, a process gone meanwhile)."""
    try:
        text = (Path(node.proc_root) / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd"):
            continue
        for part in path.split("/"):
            if part.endswith(".service"):
                return part.removesuffix(".service")
    return None


def excused_pids(node: Node, stop_pending: bool, timeout_s: float) -> frozenset[int]:
    """Holders a run will have stopped before its first cycle: the processes of the active
    stoppable services, while that stop is still to come (what ``plan`` and the choice of supported
    actions see). Once the run has stopped them, nothing is excused: holders are checked again."""
    if not stop_pending:
        return frozenset()
    units = set(active(node, STOPPABLE, timeout_s))
    if not units:
        return frozenset()
    try:
        pids = [int(p.name) for p in Path(node.proc_root).iterdir() if p.name.isdigit()]
    except OSError:
        return frozenset()
    return frozenset(pid for pid in pids if unit_of(node, pid) in units)
