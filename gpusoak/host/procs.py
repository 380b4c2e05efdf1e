"""Who holds a GPU: NVML's process list and /proc/<pid>/fd links to the GPU's device node.

A process is found by the files it has open, never by its name (the way careful reset tools do it).
The procfs root is injectable so tests and the simulator point it at a tree of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Holder:
    pid: int
    path: str  # the device node it holds open, e.g. /dev/nvidia3


def device_holders(device_nodes: set[str], proc_root: Path | str = "/proc") -> list[Holder]:
    """Processes with any of ``device_nodes`` open. Unreadable processes (gone, or not ours) are skipped."""
    proc_root = Path(proc_root)
    holders = []
    try:
        pids = [int(n) for n in os.listdir(proc_root) if n.isdigit()]
    except FileNotFoundError:
        return []
    for pid in sorted(pids):
        fd_dir = proc_root / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited meanwhile, or not readable without root
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target in device_nodes:
                holders.append(Holder(pid, target))
                break
    return holders
