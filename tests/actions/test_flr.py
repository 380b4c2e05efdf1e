import pytest

from gpusoak import plan
from gpusoak.actions import ACTIONS, Context
from gpusoak.actions.base import HELD, NOT_PRESENT, NOT_ROOT, SERVICE_ACTIVE, UNSUPPORTED
from gpusoak.actions.release import BIND_BACK_FAILED, DRIVER_OVERRIDE_MISMATCH
from gpusoak.errors import GpusoakError, WriteFailed
from gpusoak.host.nvml import OK
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
from tests.conftest import after_reset, record

GPU = PciAddress.parse("0000:18:00.0")
AUDIO = PciAddress.parse("0000:18:00.1")
FLAKY = PciAddress.parse("0000:9a:00.0")
flr = ACTIONS["flr"]
CTX = Context()
DEV = "bus/pci/devices/0000:18:00.0"
DRV = "bus/pci/drivers"


@pytest.fixture
def multi(tmp_path):
    """One GPU with an audio function, both bound (nvidia, snd_hda_intel)."""
    path = tmp_path / "multi.toml"
    path.write_text(f'[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "{GPU}"\nfunctions = ["audio"]\n')
    s = open_sim_node(str(path))
    yield s
    s.node.close()


def test_flr_unbinds_the_slot_resets_then_binds_back_graphics_first(multi):
    seen = record(multi)
    flr.perform(multi.node, GPU, CTX)
    # Companions unbound first, graphics last (as rebind does); reset_method narrowed around the
    # reset; bound back graphics first.
    assert seen == [(f"{DRV}/snd_hda_intel/unbind", str(AUDIO)), (f"{DRV}/nvidia/unbind", str(GPU)),
                    (f"{DEV}/reset_method", "flr"), (f"{DEV}/reset", "1"), (f"{DEV}/reset_method", "flr bus"),
                    (f"{DRV}/nvidia/bind", str(GPU)), (f"{DRV}/snd_hda_intel/bind", str(AUDIO))]
    root = str(multi.node.sysfs.root) + "/"
    assert [(root + p, v) for p, v in seen] == [(st.target, st.value) for st in flr.steps(multi.node, GPU, CTX)]
    assert multi.node.nvml.health(GPU).status == OK  # the GPU survived: the driver was out of the way
    assert multi.node.sysfs.function(AUDIO).driver == "snd_hda_intel"


def test_bus_reset_unbinds_the_slot_around_the_bridge_reset(multi):
    seen = record(multi)
    ACTIONS["bus_reset"].perform(multi.node, GPU, CTX)
    port = multi.node.sysfs.function(GPU).upstream_port
    assert [v if p.endswith(("unbind", "bind")) else p.split("/")[-2:] for p, v in seen] == [
        str(AUDIO), str(GPU), [str(port), "reset_subordinate"], str(GPU), str(AUDIO)]
    assert [p.split("/")[-1] for p, _ in seen] == ["unbind", "unbind", "reset_subordinate", "bind", "bind"]
    assert multi.node.nvml.health(GPU).status == OK


def test_the_slot_is_bound_back_after_a_failed_reset(multi):
    seen = record(multi)
    # pm is not a method the simulated GPU offers: the kernel rejects the reset_method write.
    with pytest.raises(GpusoakError) as err:
        ACTIONS["pm_reset"].perform(multi.node, GPU, CTX)
    assert err.value.bind_back is None  # the bind-back worked: nothing rides on the error
    assert [p.split("/")[-2:] for p, _ in seen][-2:] == [["nvidia", "bind"], ["snd_hda_intel", "bind"]]
    assert multi.node.sysfs.function(GPU).driver == "nvidia" and multi.node.nvml.health(GPU).status == OK
    assert multi.node.sysfs.function(AUDIO).driver == "snd_hda_intel"


def _dead_after_flr(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:9a:00.0"\nprofile = "flaky-flr"\np = 1.0\n')
    return open_sim_node(str(path))


def test_a_failed_bind_back_is_a_finding_beside_the_resets_own(tmp_path):
    s = _dead_after_flr(tmp_path)
    try:
        seen = record(s)
        with pytest.raises(WriteFailed) as err:
            flr.perform(s.node, FLAKY, CTX)
        assert err.value.errno == "ENOTTY" and "bind" in err.value.bind_back  # the dead GPU cannot probe
        assert seen[-1] == (f"{DRV}/nvidia/bind", str(FLAKY))  # bind-back tried after the failed reset
    finally:
        s.node.close()
    s = _dead_after_flr(tmp_path)
    try:
        soak = Soak(s.node, "r", SoakOptions(ladder=False), [FLAKY])
        soak.start(tmp_path / "j.jsonl")
        reasons = [f.reason for f in soak.run_cycle(FLAKY, "flr", 1).findings]
        assert "flr_not_ready" in reasons and BIND_BACK_FAILED in reasons
        assert reasons.index("flr_not_ready") < reasons.index(BIND_BACK_FAILED)
    finally:
        s.node.close()


def test_a_reset_that_worked_but_could_not_bind_back_fails_with_the_reason(multi):
    def override():  # something sets driver_override between the reset and the bind
        multi.kernel.write(multi.node.sysfs.function(GPU).path / "driver_override", "vfio-pci")

    after_reset(multi, override, GPU)
    with pytest.raises(WriteFailed) as err:
        flr.perform(multi.node, GPU, CTX)
    assert err.value.reason == BIND_BACK_FAILED
    assert multi.node.sysfs.function(AUDIO).driver == "snd_hda_intel"  # the others still came back


def test_a_driver_override_naming_another_driver_is_refused(multi):
    multi.kernel.write(multi.node.sysfs.function(AUDIO).path / "driver_override", "vfio-pci")
    for name in ("flr", "bus_reset"):
        (refusal,) = ACTIONS[name].refusals(multi.node, GPU, CTX)
        assert refusal.reason == DRIVER_OVERRIDE_MISMATCH and str(AUDIO) in refusal.detail


def test_a_gpu_not_on_nvidia_is_reset_as_it_is(sim, record_writes):
    sim.kernel.write(sim.node.sysfs.root / DRV / "nvidia" / "unbind", str(GPU))
    record_writes.clear()
    flr.perform(sim.node, GPU, CTX)
    assert [p.split("/")[-1] for p, _ in record_writes] == ["reset_method", "reset", "reset_method"]


def test_gpu_reset_stays_the_reset_for_a_bound_driver(sim, record_writes):
    ACTIONS["gpu_reset"].perform(sim.node, GPU, CTX)
    assert record_writes == [] and sim.node.sysfs.function(GPU).driver == "nvidia"
    assert sim.node.nvml.health(GPU).status == OK


def test_plan_shows_the_unbind_and_the_bind(multi):
    made = plan.make(multi.node, [GPU], SoakOptions(actions=("flr", "bus_reset")))
    root = multi.node.sysfs.root
    unbind = [f"write '{AUDIO}' > {root}/{DRV}/snd_hda_intel/unbind", f"write '{GPU}' > {root}/{DRV}/nvidia/unbind"]
    bind = [f"write '{GPU}' > {root}/{DRV}/nvidia/bind", f"write '{AUDIO}' > {root}/{DRV}/snd_hda_intel/bind"]
    text = plan.render(made)
    for action in ("flr", "bus_reset"):
        steps = made["gpus"][0]["actions"][action]["steps"]
        assert steps[:2] == unbind and steps[-2:] == bind, action
        assert all(f"    {s}" in text for s in steps)


def test_an_flr_under_an_active_persistenced_is_refused_held_by_process(sim_services):
    sim = sim_services
    # nvidia-persistenced holds every GPU's device file; today's code kept it running for an FLR.
    pid = sim.kernel.service_pids["nvidia-persistenced"]
    reasons = {f.reason: f.detail for f in flr.refusals(sim.node, GPU, CTX)}
    assert set(reasons) == {SERVICE_ACTIVE, HELD}
    assert f"pid {pid} (/dev/nvidia0 open)" in reasons[HELD] and reasons[SERVICE_ACTIVE].startswith("nvidia-persistenced")


def test_refusals_carry_reasons(sim):
    node = sim.node
    assert flr.refusals(node, GPU, CTX) == []
    node.is_root = False
    assert [f.reason for f in flr.refusals(node, GPU, CTX)] == [NOT_ROOT]
    node.is_root = True
    gone = PciAddress.parse("0000:01:00.0")
    assert [f.reason for f in flr.refusals(node, gone, CTX)] == [NOT_PRESENT]
    sim.kernel.write(node.sysfs.function(GPU).path / "reset_method", "bus")
    (refusal,) = flr.refusals(node, GPU, CTX)
    assert refusal.reason == UNSUPPORTED and "(bus)" in refusal.detail


def test_a_process_holding_the_gpu_refuses_the_reset(tmp_path):
    # pid 4242 has /dev/nvidia0 open: found through /proc/<pid>/fd, never by its name.
    scenario = tmp_path / "s.toml"
    scenario.write_text('[services]\nnvidia-persistenced = "inactive"\n[holders]\n4242 = "/dev/nvidia0"\n[[gpu]]\nbdf = "0000:18:00.0"\n[[gpu]]\nbdf = "0000:2a:00.0"\n')
    s = open_sim_node(str(scenario))
    try:
        (refusal,) = flr.refusals(s.node, GPU, CTX)
        assert refusal.reason == HELD and "pid 4242 (/dev/nvidia0 open)" in refusal.detail
        assert flr.refusals(s.node, PciAddress.parse("0000:2a:00.0"), CTX) == []  # that one is /dev/nvidia1
    finally:
        s.node.close()
