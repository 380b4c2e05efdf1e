from gpusoak.actions import ACTIONS, Context
from gpusoak.actions.base import HELD, NOT_PRESENT, NOT_ROOT, SERVICE_ACTIVE, UNSUPPORTED
from gpusoak.errors import WriteFailed
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node

GPU = PciAddress.parse("0000:18:00.0")
FLAKY = PciAddress.parse("0000:9a:00.0")
flr = ACTIONS["flr"]
CTX = Context()


def test_flr_narrows_reset_method_resets_and_restores(sim, record_writes):
    flr.perform(sim.node, GPU, CTX)
    base = "bus/pci/devices/0000:18:00.0"
    assert record_writes == [(f"{base}/reset_method", "flr"), (f"{base}/reset", "1"),
                             (f"{base}/reset_method", "flr bus")]
    assert [(w[0].split("/")[-1], w[1]) for w in record_writes] == \
        [(st.target.split("/")[-1], st.value) for st in flr.steps(sim.node, GPU, CTX)]


def test_reset_method_is_restored_after_a_failed_flr(tmp_path, record_writes, sim):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[gpu]]\nbdf = "0000:9a:00.0"\nprofile = "flaky-flr"\np = 1.0\n')
    s = open_sim_node(str(scenario))
    try:
        try:
            flr.perform(s.node, FLAKY, CTX)
        except WriteFailed as err:
            assert err.errno == "ENOTTY"
        else:
            raise AssertionError("a failed FLR must raise")
        assert s.node.sysfs.function(FLAKY).reset_methods == ("flr", "bus")
    finally:
        s.node.close()


def test_an_flr_under_an_active_persistenced_is_refused_held_by_process(sim):
    # nvidia-persistenced holds every GPU's device file; today's code kept it running for an FLR.
    pid = sim.kernel.service_pids["nvidia-persistenced"]
    reasons = {f.reason: f.detail for f in flr.refusals(sim.node, GPU, CTX)}
    assert set(reasons) == {SERVICE_ACTIVE, HELD}
    assert f"pid {pid} (/dev/nvidia0 open)" in reasons[HELD] and reasons[SERVICE_ACTIVE].startswith("nvidia-persistenced")


def test_refusals_carry_reasons(sim):
    node = sim.node
    sim.node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5)  # it holds every GPU
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
