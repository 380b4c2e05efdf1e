"""module_reload for functions that are not NVIDIA GPUs: the module of each one's driver, from sysfs.

The tree is laid out as the kernel lays it out (drivers/base/module.c makes a driver's ``module``
link to /sys/module/NAME; kernel/module/sysfs.c gives ``refcnt`` and ``holders/``), built by hand
here. The same action runs for real on nvme and e1000e in the real-kernel tier.
"""

import os
import shutil
from pathlib import Path

from gpusoak.actions import ACTIONS, Context
from gpusoak.actions.base import CANNOT_RELOAD, DRIVER_SHARED, MODULE_IN_USE, NOT_BOUND, UNSUPPORTED
from gpusoak.clock import RealClock
from gpusoak.host.commands import CommandResult
from gpusoak.host.kmsg import KmsgFile
from gpusoak.host.node import Node
from gpusoak.host.sysfs import Sysfs
from gpusoak.model import PciAddress

NVME, NIC, VIRTIO, EDU, VIRTIO_9P = (PciAddress.parse(a) for a in (
    "0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "0000:04:00.0", "0000:00:04.0"))


def _put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, path.parent), path)


class Runner:
    """Succeeds at everything; ``modprobe --show-depends M`` names M's file as kmod prints it
    (``insmod PATH OPTIONS``, tools/modprobe.c print_action)."""

    def __init__(self, modules_dir: Path):
        self.calls = []
        self.modules_dir = modules_dir

    def run(self, argv, *, timeout_s, env=None):
        self.calls.append(tuple(argv))
        if "--show-depends" in argv:
            return CommandResult(tuple(argv), 0, f"insmod {self.modules_dir / 'kernel' / (argv[-1] + '.ko.xz')} \n", "", 0.01)
        return CommandResult(tuple(argv), 0, "", "", 0.01)


def _node(tmp_path) -> Node:
    root = tmp_path / "sys"
    drivers = root / "bus" / "pci" / "drivers"
    functions = {NVME: ("0x1b36", "nvme", "nvme"), NIC: ("0x8086", "e1000e", "e1000e"),
                 VIRTIO: ("0x1af4", "virtio-pci", "virtio_pci"), EDU: ("0x1234", None, None),
                 VIRTIO_9P: ("0x1af4", "virtio-pci", "virtio_pci")}
    for bdf, (vendor, driver, module) in functions.items():
        d = root / "devices" / "pci0000:00" / str(bdf)
        _put(d / "vendor", vendor + "\n")
        _put(d / "class", "0x010802\n")
        _link(root / "bus" / "pci" / "devices" / str(bdf), d)
        if driver:
            _link(d / "driver", drivers / driver)
            _link(drivers / driver / str(bdf), d)  # the driver's folder lists what it drives
            _put(root / "module" / module / "refcnt", "0\n")
            if not (drivers / driver / "module").is_symlink():
                _link(drivers / driver / "module", root / "module" / module)
    for klass in ("block", "net"):  # every sysfs has them; what each function carries is below
        (root / "class" / klass).mkdir(parents=True, exist_ok=True)
    # virtio_pci is held: the 9p root file system's transport sits on it.
    _put(root / "module" / "virtio_pci" / "refcnt", "2\n")
    (root / "module" / "virtio_pci" / "holders" / "virtio_net").mkdir(parents=True)
    _put(tmp_path / "kmsg", "")
    # What modprobe loads back from: /lib/modules/<release> under the node's modules root.
    modules_dir = tmp_path / "lib" / "modules" / "6.1.0"
    for module in ("nvme", "e1000e", "virtio_pci"):
        _put(modules_dir / "kernel" / f"{module}.ko.xz", "")
    return Node(backend="real", hostname="h", kernel="6.1.0", sysfs=Sysfs(root), kmsg=KmsgFile(tmp_path / "kmsg"),
                nvml=None, nvml_unavailable="no NVML here", runner=Runner(modules_dir), proc_root=tmp_path / "proc",
                clock=RealClock(), is_root=True, modules_root=tmp_path)


def _changing(calls):
    return [c for c in calls if "--show-depends" not in c]


def test_the_modules_of_the_named_functions_drivers_are_reloaded(tmp_path):
    node = _node(tmp_path)
    ctx = Context(devices=(NVME, NIC))
    action = ACTIONS["module_reload"]
    assert action.refusals(node, None, ctx) == []
    assert [str(s) for s in action.steps(node, None, ctx)] == [
        "run rmmod nvme", "run rmmod e1000e", "run modprobe e1000e", "run modprobe nvme"]
    action.perform(node, None, ctx)
    assert _changing(node.runner.calls) == [("rmmod", "nvme"), ("rmmod", "e1000e"), ("modprobe", "e1000e"),
                                            ("modprobe", "nvme")]


def test_a_module_with_users_a_built_in_driver_and_an_unbound_function_are_refused(tmp_path):
    node = _node(tmp_path)
    action = ACTIONS["module_reload"]
    used, _ = action.refusals(node, None, Context(devices=(NVME, VIRTIO)))
    assert used.reason == MODULE_IN_USE and used.detail == "the virtio_pci module is in use (refcnt 2; used by virtio_net)"
    # virtio_pci also drives the 9p transport, which this run does not soak.
    used, shared = action.refusals(node, None, Context(devices=(VIRTIO,)))
    assert shared.reason == DRIVER_SHARED
    assert shared.detail == ("unloading virtio_pci would also unbind 0000:00:04.0 from virtio-pci, "
                             "which this run does not soak")
    (unbound,) = action.refusals(node, None, Context(devices=(EDU,)))
    assert unbound.reason == NOT_BOUND
    (node.sysfs.root / "bus" / "pci" / "drivers" / "e1000e" / "module").unlink()  # built in: no module link
    (built_in,) = action.refusals(node, None, Context(devices=(NIC,)))
    assert built_in.reason == UNSUPPORTED and "e1000e is built into the kernel" in built_in.detail
    assert _changing(node.runner.calls) == []  # refusals only read (modprobe --show-depends is a dry run)


def test_a_module_that_could_not_be_loaded_back_is_refused_before_rmmod(tmp_path):
    node = _node(tmp_path)
    (tmp_path / "lib" / "modules" / "6.1.0" / "kernel" / "e1000e.ko.xz").unlink()
    (refusal,) = ACTIONS["module_reload"].refusals(node, None, Context(devices=(NVME, NIC)))
    assert refusal.reason == CANNOT_RELOAD and "e1000e.ko.xz" in refusal.detail
    shutil.rmtree(tmp_path / "lib")  # a container without the host's /lib/modules/<release>
    (refusal,) = ACTIONS["module_reload"].refusals(node, None, Context(devices=(NVME,)))
    assert refusal.reason == CANNOT_RELOAD and "lib/modules/6.1.0 does not exist" in refusal.detail


def test_no_nvidia_service_is_asked_about_for_other_functions(tmp_path):
    node = _node(tmp_path)
    ACTIONS["module_reload"].refusals(node, None, Context(devices=(NVME,)))
    ACTIONS["module_reload"].steps(node, None, Context(devices=(NVME,)))
    assert not [c for c in node.runner.calls if c[0] == "systemctl"]
