"""The NVLink fabric on an NVSwitch node: recovery waits for the GPU's registration (issue 13, item 7)."""

import json
import sys

from gpusoak import cli
from gpusoak.model import FAILED, INCONCLUSIVE, RECOVERED, PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")
HGX = """nvswitches = 4
[services]
nvidia-persistenced = "inactive"
nvidia-fabricmanager = "active"
[[gpu]]
bdf = "0000:18:00.0"
"""


def _sim(tmp_path, text):
    path = tmp_path / "hgx.toml"
    path.write_text(text)
    return open_sim_node(str(path))


def _cycle(sim, tmp_path, action="gpu_reset", **options):
    soak = Soak(sim.node, "run-1", SoakOptions(actions=(action,), ladder=False, **options), [GPU])
    soak.start(tmp_path / "journal.jsonl")
    return soak.run_cycle(GPU, action, 1)


def _statuses(result):
    return {c.name: c.status for c in result.checks}


def test_fabric_that_never_completes_fails_the_cycle_with_its_reason(tmp_path):
    sim = _sim(tmp_path, HGX + 'fabric = "never"\n')
    try:
        r = _cycle(sim, tmp_path, recovery_deadline_s=10.0)
    finally:
        sim.node.close()
    assert r.outcome == FAILED
    assert [f.reason for f in r.findings][:1] == ["fabric_not_completed"]
    assert "IN_PROGRESS" in r.findings[0].detail
    assert r.post_check is None  # no load on a GPU that has not joined the fabric


def test_fabric_that_completes_after_seconds_recovers_and_the_post_check_runs_after(tmp_path):
    sim = _sim(tmp_path, HGX)
    try:
        r = _cycle(sim, tmp_path, post_check_seconds=1.0)
    finally:
        sim.node.close()
    assert r.outcome == RECOVERED, r.findings
    assert _statuses(r)["fabric"] == "pass"
    assert r.recovery_s >= 3.0  # NOT_STARTED then IN_PROGRESS for the simulated registration time
    assert r.post_check is not None  # it ran, and passed: CUDA initialised once the fabric had completed


def test_nvml_without_fabric_info_on_an_nvswitch_node_is_inconclusive(tmp_path):
    sim = _sim(tmp_path, HGX + '[gpu.nvml_errors]\nnvmlDeviceGetGpuFabricInfoV = "FunctionNotFound"\n')
    try:
        r = _cycle(sim, tmp_path)
    finally:
        sim.node.close()
    assert r.outcome == INCONCLUSIVE
    assert _statuses(r)["fabric"] == "cannot_look"
    assert any(f.reason == "cannot_look" and "fabric" in f.detail for f in r.findings)


def test_without_nvswitches_the_fabric_check_is_not_applicable(tmp_path):
    sim = _sim(tmp_path, '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n')
    try:
        r = _cycle(sim, tmp_path)
    finally:
        sim.node.close()
    assert r.outcome == RECOVERED
    fabric = [c for c in r.checks if c.name == "fabric"]
    assert [c.status for c in fabric] == ["skip"] and "no NVSwitch" in fabric[0].detail


def test_cuda_fails_system_not_ready_until_the_fabric_completes(tmp_path):
    sim = _sim(tmp_path, HGX)
    load = [sys.executable, "-m", "gpusoak.load", "--bdf", str(GPU), "--seconds", "0.5"]
    try:
        sim.kernel.apply_reset(sim.kernel.gpus[GPU], "gpu_reset")
        early = sim.node.runner.run(load, timeout_s=60)
        sim.kernel.clock.advance(5.0)
        late = sim.node.runner.run(load, timeout_s=60)
    finally:
        sim.node.close()
    assert early.returncode != 0 and "cudaErrorSystemNotReady" in early.stdout
    assert late.returncode == 0, late.stdout


def test_the_default_actions_on_an_nvswitch_node_are_gpu_reset_and_module_reload(tmp_path, capsys):
    path = tmp_path / "hgx.toml"
    path.write_text(HGX)
    assert cli.main(["plan", "--backend", f"sim:{path}", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["order"] == ["gpu_reset: each cycle on every GPU", "module_reload: each cycle node-wide"]
    assert list(plan["gpus"][0]["actions"]) == ["gpu_reset"]


VOLTA_PAIR = """[services]
nvidia-persistenced = "inactive"
[[gpu]]
bdf = "0000:18:00.0"
arch = "volta"
nvlink_peers = ["0000:2a:00.0"]
[[gpu]]
bdf = "0000:2a:00.0"
arch = "volta"
"""


def test_a_pre_ampere_gpu_is_reset_with_its_nvlink_peers_in_one_command(tmp_path):
    from gpusoak.actions import ACTIONS
    from gpusoak.actions.base import Context

    sim = _sim(tmp_path, VOLTA_PAIR)
    peer = PciAddress.parse("0000:2a:00.0")
    try:
        single = sim.node.runner.run(["nvidia-smi", "-r", "-i", GPU.nvml_bus_id], timeout_s=60)
        (step,) = ACTIONS["gpu_reset"].steps(sim.node, GPU, Context())
        r = _cycle(sim, tmp_path)
        resets = (sim.kernel.gpus[GPU].resets, sim.kernel.gpus[peer].resets)
    finally:
        sim.node.close()
    assert single.returncode != 0 and "reset together" in single.stderr  # alone, nvidia-smi says no
    assert str(step).endswith(f"nvidia-smi -r -i {GPU.nvml_bus_id},{peer.nvml_bus_id}")
    assert r.outcome == RECOVERED, r.findings
    assert resets == (1, 1)


def test_a_parallel_run_serialises_the_cycles_of_nvlink_peers(tmp_path):
    from gpusoak.schedule import Plan, Scheduler

    sim = _sim(tmp_path, VOLTA_PAIR + '[[gpu]]\nbdf = "0000:3a:00.0"\narch = "volta"\n')
    peer, alone = PciAddress.parse("0000:2a:00.0"), PciAddress.parse("0000:3a:00.0")
    try:
        soak = Soak(sim.node, "run-1", SoakOptions(actions=("gpu_reset",), ladder=False), [GPU, peer, alone])
        soak.start(tmp_path / "journal.jsonl")
        scheduler = Scheduler(soak, Plan(actions=("gpu_reset",), cycles=2, parallel=True))
        locks = scheduler.peer_locks
        scheduler.run()
    finally:
        sim.node.close()
    assert locks[GPU] is locks[peer] and alone not in locks  # one group, and the lone GPU runs free
    assert [r.outcome for r in scheduler.results] == [RECOVERED] * 6


def test_the_fabric_query_sends_its_struct_version(tmp_path):
    # NVML rejects a versioned struct left at version 0; the query sets it even where an older
    # nvidia-ml-py's constructor did not.
    import ctypes

    import pynvml

    from gpusoak.host.nvml import Nvml
    from gpusoak.sim.nvml import SimNvmlLib

    sim = _sim(tmp_path, HGX)

    class OldStruct(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint), ("clusterUuid", ctypes.c_char * 16), ("status", ctypes.c_uint),
                    ("cliqueId", ctypes.c_uint), ("state", ctypes.c_ubyte), ("healthMask", ctypes.c_uint)]

    lib = SimNvmlLib(sim.kernel)
    lib.c_nvmlGpuFabricInfoV_t = OldStruct
    lib.nvmlGpuFabricInfo_v2 = pynvml.nvmlGpuFabricInfo_v2
    lib.nvmlInit()
    nvml = Nvml(lib)
    h = lib.nvmlDeviceGetHandleByPciBusId(GPU.nvml_bus_id)
    assert nvml.fabric_info(h)["state"] == 3  # COMPLETED, not a version mismatch


def test_a_gpu_out_of_the_fabric_before_any_reset_is_not_soaked(tmp_path):
    # Fabric Manager stopped before the run: the GPU never registers, and every cycle would fail
    # fabric_not_completed for what it already was.
    sim = _sim(tmp_path, HGX)
    sim.kernel.services["nvidia-fabricmanager"] = "inactive"
    from gpusoak.sim import fabric

    fabric.restart(sim.kernel, sim.kernel.gpus[GPU])
    r = _cycle(sim, tmp_path)
    assert r.outcome == "skipped" and r.reason == "not_healthy_before_soak"
    assert "fabric state" in r.findings[0].detail
