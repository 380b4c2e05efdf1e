"""Every action: what it writes or runs, what it refuses and why, and that the GPU comes back."""

import errno

import pytest

from gpusoak.actions import ACTIONS, GPU_ACTIONS, Context
from gpusoak.actions.base import (
    DISPLAY,
    FABRIC_MANAGER,
    HELD,
    IOMMU,
    MODULE_NOT_LOADED,
    NOT_BOUND,
    NOT_ROOT,
    SERVICE_ACTIVE,
    SHARED_DOMAIN,
    UNSUPPORTED,
)
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
from tests.conftest import record

GPU = PciAddress.parse("0000:18:00.0")
AUDIO = PciAddress.parse("0000:18:00.1")
CTX = Context()


def _node(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return open_sim_node(str(path))


@pytest.fixture
def multi(tmp_path):
    s = _node(tmp_path, '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\nfunctions = ["audio"]\n')
    yield s
    s.node.close()


# pm_reset is not among an NVIDIA GPU's reset methods (the simulator lists "flr bus", as the kernel
# does for them); its recovery is shown on real devices in the real-kernel tier.
@pytest.mark.parametrize("action", [a for a in GPU_ACTIONS if a != "pm_reset"])
def test_each_gpu_action_recovers_a_healthy_multifunction_gpu(multi, tmp_path, action):
    soak = Soak(multi.node, "r", SoakOptions(actions=(action,), ladder=False), [GPU])
    soak.start(tmp_path / "j.jsonl")
    r = soak.run_cycle(GPU, action, 1)
    assert r.outcome == "recovered", r.explain()
    checks = {c.name: c.status for c in r.checks}
    assert checks["functions"] == "pass" and checks["driver"] == "pass"  # the audio function came back too


def test_pm_reset_is_refused_where_the_kernel_lists_no_pm_method(multi, tmp_path):
    soak = Soak(multi.node, "r", SoakOptions(actions=("pm_reset",), ladder=False), [GPU])
    soak.start(tmp_path / "j.jsonl")
    r = soak.run_cycle(GPU, "pm_reset", 1)
    assert r.outcome == "refused" and r.findings[0].reason == UNSUPPORTED
    assert "pm is not among the enabled reset methods (flr bus)" in r.findings[0].detail


def test_steps_are_exactly_what_is_written(multi):
    for name in ("flr", "bus_reset", "rebind", "vfio_cycle", "remove_rescan"):
        action = ACTIONS[name]
        planned = [(s.target, s.value) for s in action.steps(multi.node, GPU, CTX)]
        seen = record(multi)
        action.perform(multi.node, GPU, CTX)
        root = str(multi.node.sysfs.root) + "/"
        assert [(root + p, v) for p, v in seen] == planned, name


def test_functions_move_together(multi):
    seen = record(multi)
    ACTIONS["rebind"].perform(multi.node, GPU, CTX)
    assert [(p.split("/")[-2:], v) for p, v in seen] == [
        (["snd_hda_intel", "unbind"], str(AUDIO)), (["nvidia", "unbind"], str(GPU)),
        (["nvidia", "bind"], str(GPU)), (["snd_hda_intel", "bind"], str(AUDIO))]
    seen.clear()
    ACTIONS["vfio_cycle"].perform(multi.node, GPU, CTX)
    overrides = [(p.split("/")[-2], v) for p, v in seen if p.endswith("driver_override")]
    assert overrides == [(str(GPU), "vfio-pci"), (str(AUDIO), "vfio-pci"), (str(GPU), "\n"), (str(AUDIO), "\n")]
    assert multi.node.sysfs.function(AUDIO).driver == "snd_hda_intel"


def test_bus_reset_of_a_multifunction_gpu_goes_through_the_bridge(multi):
    steps = ACTIONS["bus_reset"].steps(multi.node, GPU, CTX)
    (step,) = [s for s in steps if not s.target.endswith("bind")]  # the slot is unbound around it
    assert step.target.endswith("0000:17:01.0/reset_subordinate") and step.value == "1"


def test_refusals_carry_reasons(tmp_path):
    s = _node(tmp_path, """
nvswitches = 2
[services]
nvidia-persistenced = "inactive"
[holders]
4242 = "/dev/nvidia1"
[[gpu]]
bdf = "0000:18:00.0"
display = true
[[gpu]]
bdf = "0000:2a:00.0"
[[gpu]]
bdf = "0000:3a:00.0"
upstream = ["0000:37:01.0"]
arch = "ampere"
[[gpu]]
bdf = "0000:3b:00.0"
upstream = ["0000:37:01.0"]
""")
    node = s.node
    try:
        def reasons(name, bdf):
            return [f.reason for f in ACTIONS[name].refusals(node, PciAddress.parse(bdf) if bdf else None, CTX)]

        assert all(reasons(a, "0000:18:00.0") == [DISPLAY] for a in GPU_ACTIONS)
        assert all(reasons(a, "0000:2a:00.0") == [HELD] for a in GPU_ACTIONS)
        assert reasons("bus_reset", "0000:3a:00.0") == [SHARED_DOMAIN]
        assert "would also reset 0000:3b:00.0" in ACTIONS["bus_reset"].refusals(node, PciAddress.parse("0000:3a:00.0"), CTX)[0].detail
        assert reasons("gpu_reset", "0000:3a:00.0") == [FABRIC_MANAGER]  # Ampere + NVSwitch, no Fabric Manager
        assert reasons("gpu_reset", "0000:3b:00.0") == []  # Hopper needs none
        node.runner.run(["systemctl", "start", "nvidia-fabricmanager"], timeout_s=5)
        s.kernel.services["nvidia-fabricmanager"] = "active"
        assert reasons("gpu_reset", "0000:3a:00.0") == []
        assert set(reasons("module_reload", None)) == {HELD, DISPLAY, "fabric_service_running"}
        node.is_root = False
        assert reasons("flr", "0000:3b:00.0") == [NOT_ROOT]
    finally:
        s.node.close()


def test_more_refusals(sim):
    node, gpu = sim.node, GPU
    node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5)  # it holds every GPU
    sim.kernel.tree.unbind(gpu)
    assert [f.reason for f in ACTIONS["rebind"].refusals(node, gpu, CTX)] == [NOT_BOUND]
    sim.kernel.tree.bind(gpu, "nvidia")
    import shutil
    shutil.rmtree(node.sysfs.root / "bus" / "pci" / "drivers" / "vfio-pci")
    assert [f.reason for f in ACTIONS["vfio_cycle"].refusals(node, gpu, CTX)] == [UNSUPPORTED]
    (node.sysfs.function(gpu).path / "iommu_group").unlink()
    assert IOMMU in [f.reason for f in ACTIONS["vfio_cycle"].refusals(node, gpu, CTX)]
    sim.kernel.write(node.sysfs.function(gpu).path / "reset_method", "flr")
    for m in ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"):
        node.runner.run(["rmmod", m], timeout_s=5)
    assert [f.reason for f in ACTIONS["module_reload"].refusals(node, None, Context(stop_services=True))] == [MODULE_NOT_LOADED]


def test_module_reload_leaves_the_services_to_the_run_and_refuses_one_kept_running(sim_services):
    sim = sim_services
    node = sim.node
    assert [f.reason for f in ACTIONS["module_reload"].refusals(node, None, CTX)] == [HELD, SERVICE_ACTIVE]
    ctx = Context(stop_services=True)  # its holds are excused: the run stops it before its first cycle
    assert ACTIONS["module_reload"].refusals(node, None, ctx) == []
    node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5)  # what the run does
    calls = node.runner.calls
    calls.clear()
    ACTIONS["module_reload"].perform(node, None, Context(stop_services=True, services_stopped=True))
    changing = [c for c in calls if c[:2] != ("systemctl", "is-active")]
    assert changing == [("rmmod", "nvidia_drm"), ("rmmod", "nvidia_modeset"), ("rmmod", "nvidia_uvm"), ("rmmod", "nvidia"),
                        ("modprobe", "nvidia"), ("modprobe", "nvidia_uvm"), ("modprobe", "nvidia_modeset"),
                        ("modprobe", "nvidia_drm")]
    assert node.sysfs.function(GPU).driver == "nvidia"


def test_a_module_in_use_is_refused_when_no_service_explains_it(tmp_path):
    s = _node(tmp_path, '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\nprofile = "module-busy"\n')
    try:
        (refusal,) = ACTIONS["module_reload"].refusals(s.node, None, CTX)
        assert refusal.reason == "module_in_use" and "1 user(s) beyond its dependent modules (refcnt 3)" in refusal.detail
    finally:
        s.node.close()


def test_module_busy_puts_back_what_it_unloaded(tmp_path):
    s = _node(tmp_path, '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\nprofile = "module-busy"\n')
    try:
        with pytest.raises(Exception) as err:
            ACTIONS["module_reload"].perform(s.node, None, CTX)
        assert err.value.reason == "module_in_use" and "Module nvidia is in use" in str(err.value)
        assert s.kernel.modules == {"nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_drm"}
    finally:
        s.node.close()


def test_gpu_reset_exit_codes_are_named(sim):
    sim.kernel._die(sim.kernel.gpus[GPU])
    with pytest.raises(Exception) as err:
        ACTIONS["gpu_reset"].perform(sim.node, GPU, CTX)
    assert "exited 15 (GPU has fallen off the bus)" in str(err.value)


def test_a_no_bus_reset_part_is_refused_before_any_write_and_the_kernel_would_refuse_too(tmp_path):
    # 0x2340-0x237f (Grace Hopper platform parts): quirk_nvidia_no_bus_reset. The kernel leaves
    # "bus" out of reset_method and answers a bridge reset with ENOTTY, the same code it returns for
    # a device that did not come back: so "unsupported" is decided before the write.
    path = tmp_path / "gh.toml"
    path.write_text('[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n'
                    'device_id = "0x2342"\nfunctions = ["audio"]\n')
    s = open_sim_node(str(path))
    try:
        gpu = PciAddress.parse("0000:18:00.0")
        assert s.node.sysfs.function(gpu).reset_methods == ("flr",)
        (why,) = ACTIONS["bus_reset"].refusals(s.node, gpu, CTX)
        assert why.reason == UNSUPPORTED and "NO_BUS_RESET" in why.detail
        port = s.node.sysfs.function(gpu).upstream_port
        with pytest.raises(OSError) as err:
            s.kernel.write(s.node.sysfs.function(port).path / "reset_subordinate", "1")
        assert err.value.errno == errno.ENOTTY and s.kernel.gpus[gpu].resets == 0  # nothing was reset
    finally:
        s.node.close()


def test_on_an_nvswitch_node_resets_that_bypass_fabric_manager_are_refused(tmp_path):
    # After a reset a GPU must rejoin the NVLink fabric through Fabric Manager; a sysfs FLR, bus
    # reset or removal bypasses it. nvidia-smi -r (gpu_reset) and module_reload stay.
    path = tmp_path / "hgx.toml"
    path.write_text('nvswitches = 4\n[services]\nnvidia-persistenced = "inactive"\n'
                    '[[gpu]]\nbdf = "0000:18:00.0"\n[[gpu]]\nbdf = "0000:2a:00.0"\n')
    s = open_sim_node(str(path))
    try:
        gpu = PciAddress.parse("0000:18:00.0")
        for name in ("flr", "pm_reset", "bus_reset", "remove_rescan"):
            (why,) = ACTIONS[name].refusals(s.node, gpu, CTX)
            assert why.reason == "fabric_bypass" and "Fabric Manager" in why.detail, name
        assert ACTIONS["gpu_reset"].refusals(s.node, gpu, CTX) == []  # Hopper: no Fabric Manager needed to reset
    finally:
        s.node.close()
