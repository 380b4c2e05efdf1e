"""A reset under a bound, live nvidia harms the GPU in the simulator, as the sources say it must on a
real node (gpusoak/sim/driver_reset.py); a reset of the unbound GPU does not. No Xid number is
asserted: which one a real node prints is an inference."""

import pytest

from gpusoak.host.nvml import GPU_LOST, OK
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node

GPU = PciAddress.parse("0000:18:00.0")


@pytest.fixture
def node_of(tmp_path):
    opened = []

    def make(arch, functions=()):
        path = tmp_path / f"{arch}.toml"
        # persistenced off: it would hold the GPU, and an unbind waits for its holders (nv_pci_remove).
        path.write_text('[services]\nnvidia-persistenced = "inactive"\n' + f'[[gpu]]\nbdf = "{GPU}"\narch = "{arch}"\nfunctions = {list(functions)!r}\n'.replace("'", '"'))
        s = open_sim_node(str(path))
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.node.close()


def _drv(s, driver, op):
    return s.node.sysfs.root / "bus" / "pci" / "drivers" / driver / op


def _nvrm_lines(s, cursor):
    return [r.message for r in s.node.kmsg.records_since(cursor) if r.message.startswith("NVRM: Xid (PCI:0000:18:00)")]


def _reload_driver(s):
    run = s.node.runner.run
    for m in ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"):
        assert run(["rmmod", m], timeout_s=5).ok
    assert run(["modprobe", "nvidia"], timeout_s=5).ok


@pytest.mark.parametrize("arch", ["hopper", "blackwell", "ampere"])
def test_an_flr_under_a_bound_nvidia_loses_a_gsp_gpu_until_the_driver_is_reloaded(node_of, arch):
    s = node_of(arch)
    fn = s.node.sysfs.function(GPU)
    cursor = s.node.kmsg.cursor()
    s.kernel.write(fn.path / "reset", "1")  # the PCI core accepts it: the reset itself worked
    assert fn.driver == "nvidia" and fn.power_state == "D0"  # nothing in sysfs tells
    assert s.node.nvml.health(GPU).status == GPU_LOST
    assert len(_nvrm_lines(s, cursor)) == 1  # the driver says so in the kernel log
    # A rebind does not bring it back (RM's lost state outlives the device's unbind) ...
    s.kernel.write(_drv(s, "nvidia", "unbind"), str(GPU))
    with pytest.raises(OSError):
        s.kernel.write(_drv(s, "nvidia", "bind"), str(GPU))
    # ... a driver reload does.
    _reload_driver(s)
    assert fn.driver == "nvidia" and s.node.nvml.health(GPU).status == OK


def test_a_bus_reset_under_a_bound_nvidia_loses_the_gpu_too(node_of):
    s = node_of("hopper", ["audio"])
    port = s.node.sysfs.function(GPU).upstream_port
    s.kernel.write(s.node.sysfs.function(port).path / "reset_subordinate", "1")
    assert s.node.nvml.health(GPU).status == GPU_LOST


def test_a_pre_gsp_gpu_looks_recovered_then_fails_at_next_use(node_of):
    s = node_of("volta")
    fn = s.node.sysfs.function(GPU)
    cursor = s.node.kmsg.cursor()
    s.kernel.write(fn.path / "reset", "1")
    s.node.clock.sleep(1.0)
    assert fn.driver == "nvidia" and fn.power_state == "D0" and fn.link.current_width == 16
    assert _nvrm_lines(s, cursor) == []  # looks recovered: nothing in the log yet
    assert s.node.nvml.health(GPU).status == GPU_LOST  # the first use finds out
    assert len(_nvrm_lines(s, cursor)) == 1
    assert s.node.nvml.health(GPU).status == GPU_LOST  # and it stays lost
    load = s.node.runner.run(["python", "-m", "gpusoak.load", "--bdf", str(GPU), "--seconds", "1"], timeout_s=30)
    assert load.returncode != 0 and "GPU lost" in load.stdout


def test_a_pre_gsp_gpu_reset_under_nvidia_fails_the_next_load(node_of):
    s = node_of("pascal")
    s.kernel.write(s.node.sysfs.function(GPU).path / "reset", "1")
    load = s.node.runner.run(["python", "-m", "gpusoak.load", "--bdf", str(GPU), "--seconds", "1"], timeout_s=30)
    assert load.returncode != 0 and "GPU lost" in load.stdout
    assert s.node.nvml.health(GPU).status == GPU_LOST


@pytest.mark.parametrize("arch", ["hopper", "volta"])
def test_an_flr_of_the_unbound_gpu_does_no_harm(node_of, arch):
    s = node_of(arch)
    fn = s.node.sysfs.function(GPU)
    cursor = s.node.kmsg.cursor()
    s.kernel.write(_drv(s, "nvidia", "unbind"), str(GPU))
    s.kernel.write(fn.path / "reset", "1")
    s.kernel.write(_drv(s, "nvidia", "bind"), str(GPU))
    assert s.node.nvml.health(GPU).status == OK and _nvrm_lines(s, cursor) == []


def test_nvidia_smi_r_is_the_drivers_own_reset_and_does_no_harm(node_of):
    s = node_of("hopper")
    done = s.node.runner.run(["nvidia-smi", "-r", "-i", GPU.nvml_bus_id], timeout_s=30)
    assert done.returncode == 0 and s.node.nvml.health(GPU).status == OK
