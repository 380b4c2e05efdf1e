"""Holders that cannot hide: device numbers (not names), the minor without NVML, the scope of each
node, vfio users, a non-GPU function the node uses, a check that cannot look, and the second look
right before ``perform``. On the simulator, whose processes hold simulated device nodes."""

import pytest

from gpusoak.actions import ACTIONS, Context
from gpusoak.actions.base import CANNOT_LOOK, HELD, IN_USE, holder_refusals
from gpusoak.errors import Hung
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.sim.procs import CAPS_MAJOR
from gpusoak.soak import Soak, SoakOptions
from tests.host.test_usage import NVME, IpRunner, node_tree

GPU0, GPU1 = PciAddress.parse("0000:18:00.0"), PciAddress.parse("0000:2a:00.0")
CTX = Context(stop_services=True)
TWO = '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n[[gpu]]\nbdf = "0000:2a:00.0"\n'


@pytest.fixture
def open_node(tmp_path):
    opened = []

    def make(extra=""):
        path = tmp_path / f"s{len(opened)}.toml"
        path.write_text(extra + TWO)
        opened.append(open_sim_node(str(path)))
        return opened[-1]

    yield make
    for s in opened:
        s.node.close()


def reasons(action, node, bdf, ctx=CTX):
    return [f.reason for f in ACTIONS[action].refusals(node, bdf, ctx)]


def test_a_renamed_node_in_a_container_is_found_by_its_device_number(open_node):
    # The container names 195:0 /dev/gpu0 and 195:255 /dev/ctl: the same devices, other names.
    s = open_node('[nodes]\n"/dev/gpu0" = "nvidia0"\n"/dev/ctl" = "nvidiactl"\n[holders]\n4242 = "/dev/gpu0"\n'
                  '4243 = "/dev/ctl"\n')
    (held,) = ACTIONS["flr"].refusals(s.node, GPU0, CTX)
    assert held.reason == HELD and "pid 4242 (/dev/gpu0 open)" in held.detail and "4243" not in held.detail
    assert reasons("flr", s.node, GPU1) == []
    (held,) = ACTIONS["module_reload"].refusals(s.node, None, CTX)
    assert held.reason == HELD and "pid 4243 (/dev/ctl open)" in held.detail


def test_without_nvml_the_holder_is_found_through_the_drivers_procfs_minor(open_node):
    s = open_node('[holders]\n4242 = "/dev/nvidia1"\n')
    s.node.nvml, s.node.nvml_unavailable = None, "NVML not available: NVML_ERROR_LIB_RM_VERSION_MISMATCH"
    (held,) = ACTIONS["flr"].refusals(s.node, GPU1, CTX)
    assert held.reason == HELD and "pid 4242 (/dev/nvidia1 open)" in held.detail
    assert reasons("flr", s.node, GPU0) == []
    # The driver publishes the file only while it drives the GPU (nv_procfs_add_gpu/remove_gpu).
    info = s.node.proc_root / "driver" / "nvidia" / "gpus" / str(GPU1) / "information"
    assert "Device Minor: \t 1\n" in info.read_text()
    s.kernel.procs.exit(4242)  # else the unbind waits for it (nv_pci_remove)
    s.kernel.write(s.node.sysfs.root / "bus" / "pci" / "drivers" / "nvidia" / "unbind", str(GPU1))
    assert not info.exists()


def test_one_gpus_load_child_blocks_only_its_gpu_and_the_node(open_node):
    s = open_node()
    child = s.kernel.procs.spawn("python3")  # what a CUDA process on GPU0 opens
    for device in ("nvidia0", "nvidiactl", "nvidia-uvm"):
        s.kernel.procs.open(child, device)
    assert reasons("flr", s.node, GPU1) == [] and reasons("gpu_reset", s.node, GPU1) == []
    assert reasons("flr", s.node, GPU0) == [HELD]
    s.kernel.procs.close(child, 3)  # nvidia0 closed: only the shared nodes are left
    assert reasons("flr", s.node, GPU0) == []
    assert reasons("module_reload", s.node, None) == [HELD]
    s.kernel.procs.close(child, 4)  # nvidia-uvm alone still holds the node's driver stack
    (held,) = ACTIONS["module_reload"].refusals(s.node, None, CTX)
    assert held.reason == HELD and f"pid {child} (/dev/nvidia-uvm open)" in held.detail
    assert s.node.runner.run(["rmmod", "nvidia_uvm"], timeout_s=5).stderr == "rmmod: ERROR: Module nvidia_uvm is in use\n"


def test_a_mig_instance_holder_blocks_its_gpu_only(open_node):
    # gpu0/gi1/access is minor 12 of nvidia-caps (nv-caps.c table order: 0 fabric-mgmt, 1 config,
    # 2 monitor, then gpu0/gi0/access, its eight ci*, gpu0/gi1/access ...).
    s = open_node(f'[nodes]\n"/dev/nvidia-caps/nvidia-cap12" = "{CAPS_MAJOR}:12"\n[holders]\n'
                  '4242 = "/dev/nvidia-caps/nvidia-cap12"\n')
    assert reasons("flr", s.node, GPU0) == [HELD] and reasons("flr", s.node, GPU1) == []
    assert reasons("module_reload", s.node, None) == [HELD]


def _attach_vfio(s, bdf):
    fn = s.node.sysfs.function(bdf)
    s.kernel.write(fn.path / "driver_override", "vfio-pci")
    s.kernel.write(s.node.sysfs.root / "bus" / "pci" / "drivers" / "nvidia" / "unbind", str(bdf))
    s.kernel.write(s.node.sysfs.root / "bus" / "pci" / "drivers_probe", str(bdf))
    assert fn.driver == "vfio-pci"
    return fn


def test_a_vfio_user_blocks_the_function_and_its_detach(open_node):
    s = open_node()
    fn = _attach_vfio(s, GPU0)
    group = fn.iommu_group
    # The group node and the cdev are devices with numbers the kernel publishes in sysfs.
    assert (s.node.sysfs.root / "class" / "vfio" / str(group) / "dev").read_text() == "511:0\n"
    assert (fn.path / "vfio-dev" / "vfio0" / "dev").read_text() == "508:0\n"
    assert reasons("flr", s.node, GPU0) == []
    qemu = s.kernel.procs.spawn("qemu-system-x86")
    fd = s.kernel.procs.open(qemu, f"vfio/{group}")
    (held,) = ACTIONS["flr"].refusals(s.node, GPU0, CTX)
    assert held.reason == HELD and f"pid {qemu} (/dev/vfio/{group} open)" in held.detail
    s.kernel.procs.close(qemu, fd)
    s.kernel.procs.open(qemu, "vfio/devices/vfio0")  # the iommufd way: the cdev, no group
    assert reasons("flr", s.node, GPU0) == [HELD]
    # vfio_unregister_group_dev waits for the user: the unbind does not return.
    unbind = s.node.sysfs.root / "bus" / "pci" / "drivers" / "vfio-pci" / "unbind"
    with pytest.raises(Hung):
        s.node.sysfs.write(unbind, str(GPU0), timeout_s=5, what="unbind from vfio-pci")
    for blocked in s.kernel.blocked:
        blocked.set()
    s.kernel.procs.exit(qemu)
    s.node.sysfs.write(unbind, str(GPU0), timeout_s=5, what="unbind from vfio-pci")
    assert f"vfio/{group}" not in s.kernel.procs.devices
    assert not (s.node.sysfs.root / "class" / "vfio" / str(group)).exists()


def test_a_non_gpu_function_the_node_uses_is_refused(tmp_path):
    from gpusoak.clock import RealClock
    from gpusoak.host.kmsg import KmsgFile
    from gpusoak.host.node import Node

    sysfs, proc, _ = node_tree(tmp_path)
    (tmp_path / "kmsg").write_text("")
    node = Node(backend="real", hostname="h", kernel="6.12", sysfs=sysfs, kmsg=KmsgFile(tmp_path / "kmsg"),
                nvml=None, nvml_unavailable="no NVML here", runner=IpRunner({}), proc_root=proc,
                clock=RealClock(), is_root=True)
    (sysfs.root / "bus" / "pci" / "drivers" / "nvme").mkdir(parents=True)
    import os
    os.symlink(sysfs.root / "bus" / "pci" / "drivers" / "nvme", sysfs.function(NVME).path / "driver")
    (used,) = holder_refusals(node, NVME, CTX)
    assert used.reason == IN_USE and "nvme0n1p1 is mounted on /data" in used.detail
    assert IN_USE in [f.reason for f in holder_refusals(node, None, Context(devices=(NVME,)))]


def test_a_proc_it_cannot_read_refuses_with_cannot_look(open_node, tmp_path):
    s = open_node()
    s.node.proc_root = tmp_path / "unmounted-proc"
    for action, bdf in (("flr", GPU0), ("rebind", GPU1), ("module_reload", None)):
        found = ACTIONS[action].refusals(s.node, bdf, CTX)
        assert CANNOT_LOOK in [f.reason for f in found], action
    # NVML gone and no driver procfs either: no minor, so nothing to look for. Not a pass.
    (tmp_path / "unmounted-proc").mkdir()
    s.node.nvml = None
    (blind,) = ACTIONS["flr"].refusals(s.node, GPU0, CTX)
    assert blind.reason == CANNOT_LOOK and f"no device minor for {GPU0}" in blind.detail


def test_a_holder_that_comes_during_the_load_refuses_the_cycle_before_the_reset(open_node, tmp_path):
    s = open_node()
    inner = s.node.runner

    class HolderAfterLoad:
        """The node's runner; after the load child exits, a monitoring agent opens GPU0."""

        def run(self, argv, *, timeout_s, env=None):
            result = inner.run(argv, timeout_s=timeout_s, env=env)
            if list(argv[1:3]) == ["-m", "gpusoak.load"]:
                agent = s.kernel.procs.spawn("dcgm-exporter")
                s.kernel.procs.open(agent, "nvidia0")
            return result

        def __getattr__(self, name):
            return getattr(inner, name)

    s.node.runner = HolderAfterLoad()
    soak = Soak(s.node, "r", SoakOptions(actions=("flr",), ladder=False, load_seconds=1.0), [GPU0])
    soak.start(tmp_path / "j.jsonl")
    r = soak.run_cycle(GPU0, "flr", 1)
    assert r.outcome == "refused" and r.findings[0].reason == HELD, r.explain()
    assert "(/dev/nvidia0 open)" in r.findings[0].detail and r.load is not None  # the load ran
    assert s.kernel.gpus[GPU0].resets == 0


def test_a_soak_in_a_pid_namespace_of_its_own_cannot_look(open_node):
    # A container without the host's PID namespace sees none of the host's holders in /proc:
    # the unbind would then wait in nv_pci_remove for a persistenced nobody saw.
    s = open_node()
    assert reasons("flr", s.node, GPU0) == []
    status = s.node.proc_root / str(s.node.pid) / "status"
    status.write_text(status.read_text().replace(f"NSpid:\t{s.node.pid}", f"NSpid:\t{s.node.pid}\t7"))
    (refusal,) = ACTIONS["flr"].refusals(s.node, GPU0, CTX)
    assert refusal.reason == CANNOT_LOOK and "PID namespace of its own" in refusal.detail
