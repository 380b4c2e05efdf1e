"""A node under test: the four seams bound together, real or simulated."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpusoak.clock import RealClock
from gpusoak.errors import GpusoakError
from gpusoak.host.commands import Runner, SubprocessRunner
from gpusoak.host.kmsg import DevKmsg, KernelLog
from gpusoak.host.nvml import NvmlClient
from gpusoak.host.sysfs import Sysfs
from gpusoak.model import PciAddress


@dataclass
class Node:
    backend: str  # "real" or "sim:<scenario>"
    hostname: str
    kernel: str
    sysfs: Sysfs
    kmsg: KernelLog
    nvml: NvmlClient | None
    nvml_unavailable: str | None  # why NVML checks are skipped, when nvml is None
    runner: Runner
    proc_root: Path
    clock: RealClock
    is_root: bool
    dev_root: Path = Path("/dev")
    stat: Callable[[str | os.PathLike], os.stat_result] = os.stat  # the holder scan's stat seam (st_rdev)
    pid: int = field(default_factory=os.getpid)  # this process: it must hold no GPU's device file
    # The root kmod finds lib/modules/<release> under: / unless modprobe is told otherwise
    # (MODPROBE_OPTIONS="-d DIR"); the simulated node's own folder in the simulator.
    modules_root: Path = Path("/")
    load_seconds_default: float = 20.0  # load before each cycle unless the user says otherwise
    post_check_seconds_default: float = 5.0
    _close: list[Callable[[], None]] = field(default_factory=list)

    @property
    def simulated(self) -> bool:
        return self.backend.startswith("sim")

    def gpus(self) -> list[PciAddress]:
        return self.sysfs.nvidia_gpus()

    def driver_version(self) -> str | None:
        return self.sysfs.read(self.sysfs.root / "module" / "nvidia" / "version")

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.close()
        close_log = getattr(self.kmsg, "close", None)
        if close_log is not None:
            close_log()  # DevKmsg keeps one descriptor open for the whole run
        while self._close:
            self._close.pop()()


def open_real_node() -> Node:
    """The node this process runs on: /sys, /dev/kmsg, libnvidia-ml, subprocess."""
    runner = SubprocessRunner()
    try:
        nvml, why = NvmlClient.open(runner), None
    except GpusoakError as err:  # no library, no driver, or the probe child could not answer
        nvml, why = None, str(err)
    return Node(
        backend="real",
        hostname=socket.gethostname(),
        kernel=platform.release(),
        sysfs=Sysfs("/sys"),
        kmsg=DevKmsg("/dev/kmsg"),
        nvml=nvml,
        nvml_unavailable=why,
        runner=runner,
        proc_root=Path("/proc"),
        clock=RealClock(),
        is_root=os.geteuid() == 0,
        modules_root=modprobe_dirname(os.environ.get("MODPROBE_OPTIONS", "")),
    )


def modprobe_dirname(options: str) -> Path:
    """The ``-d``/``--dirname`` root in MODPROBE_OPTIONS, which every modprobe gpusoak runs reads
    as if given first on its command line (kmod tools/modprobe.c prepend_options_from_env: split
    at spaces, quotes kept together); the last one given wins, as getopt leaves it."""
    import shlex

    try:
        words = shlex.split(options)
    except ValueError:
        words = options.split(" ")
    root = "/"
    for i, w in enumerate(words):
        if w in ("-d", "--dirname") and i + 1 < len(words):
            root = words[i + 1]
        elif w.startswith("--dirname="):
            root = w.split("=", 1)[1]
        elif w.startswith("-d") and len(w) > 2 and not w.startswith("--"):
            root = w[2:]
    return Path(root or "/")
