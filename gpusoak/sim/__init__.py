"""A simulated GPU node: a sysfs tree, a kernel log, NVML and commands, with fault profiles.

``open_sim_node("h100-8gpu", seed=1)`` returns a ``Node`` whose seams are bound to a temporary
folder; the production readers run over it unchanged.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpusoak.clock import VirtualClock
from gpusoak.errors import NvmlUnavailable
from gpusoak.host.kmsg import KmsgFile
from gpusoak.host.node import Node
from gpusoak.host.nvml import NvmlClient
from gpusoak.host.sysfs import Sysfs
from gpusoak.sim import scenario as scenarios
from gpusoak.sim.kernel import SimKernel
from gpusoak.sim.modules import install as install_modules
from gpusoak.sim.procs import NVIDIA_MAJOR, SimProcesses
from gpusoak.sim.runner import SimRunner
from gpusoak.sim.tree import build


@dataclass
class SimNode:
    node: Node
    kernel: SimKernel
    scenario: scenarios.Scenario
    root: Path


def _memory_tmp() -> str | None:
    """Where a simulated node's files go: /dev/shm where it is a writable folder (tmpfs: every
    simulated process start and exit makes and removes /proc entries, and a disk's journal makes
    that the simulator's main cost), else the system's temporary folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def open_sim_node(name_or_path: str | None = None, *, seed: int | None = None,
                  root: Path | None = None, time_scale: float | None = None) -> SimNode:
    scenario = scenarios.load(name_or_path)
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="gpusoak-sim-", dir=_memory_tmp())) if root is None else Path(root)
    sys_root = root / "sys"
    tree = build(sys_root, scenario)
    install_modules(root, scenario)
    proc = root / "proc"
    processes = SimProcesses(proc, root / "dev")
    for minor in range(len(scenario.gpus)):
        processes.add_device(f"nvidia{minor}", NVIDIA_MAJOR, minor)
    for path, number in scenario.nodes.items():
        processes.add_device(path.removeprefix("/dev/"), *_number(processes, number))
    for pid, device in scenario.holders.items():
        # "/dev/nvidia0" is the simulated node's own /dev/nvidia0; any other path is opened as is.
        name = device.removeprefix("/dev/") if device.startswith("/dev/") else device
        processes.spawn(f"holder-{pid}", pid)
        processes.open(pid, name)
    clock = VirtualClock(time_scale=scenario.time_scale if time_scale is None else time_scale)
    kernel = SimKernel(sys_root, tree, scenario, clock, scenario.seed if seed is None else seed, processes)
    runner = SimRunner(kernel)
    try:
        nvml, why = NvmlClient.open(runner), None
    except NvmlUnavailable as err:  # a scenario that starts without the nvidia module
        nvml, why = None, str(err)
    node = Node(
        backend=f"sim:{scenario.name}",
        hostname=scenario.hostname,
        kernel=scenario.kernel,
        sysfs=Sysfs(sys_root, writer=kernel.write, timeout_scale=0.01, reader=kernel.read),
        kmsg=KmsgFile(kernel.kmsg_path, opener=kernel.devkmsg_open),
        nvml=nvml,
        nvml_unavailable=why,
        runner=runner,
        proc_root=proc,
        clock=clock,
        is_root=True,
        dev_root=root / "dev",
        modules_root=root,  # the simulated node's "/": its lib/modules/<release> (sim.modules)
        stat=processes.stat,
        pid=processes.self_pid,
        # A real node's load and post-check (Node's defaults) unless the scenario turns them off.
        load_seconds_default=Node.load_seconds_default if scenario.load_seconds is None else scenario.load_seconds,
        post_check_seconds_default=Node.post_check_seconds_default if scenario.post_check_seconds is None
        else scenario.post_check_seconds,
    )
    if owned:
        node._close.append(lambda: shutil.rmtree(root, ignore_errors=True))
        # And at exit, for a node nobody closed: on /dev/shm a leftover tree holds memory.
        atexit.register(shutil.rmtree, root, True)
    return SimNode(node, kernel, scenario, root)


def _number(processes: SimProcesses, text: str) -> tuple[int, int]:
    """A [nodes] value: the name of a node the simulated /dev has, or "major:minor"."""
    if text.removeprefix("/dev/") in processes.devices:
        return tuple(processes.devices[text.removeprefix("/dev/")])
    try:
        major, minor = (int(x) for x in text.split(":"))
    except ValueError:
        raise scenarios.ScenarioError(f"[nodes]: {text!r} is neither a device node nor major:minor") from None
    return major, minor
