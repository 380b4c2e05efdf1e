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
