"""Health gates: DCGM's limits, applied before the soak and after each cycle."""

import pytest

from gpusoak import gates as gates_file
from gpusoak.errors import UsageError
from gpusoak.host.nvml import NvmlHealth
from gpusoak.model import PciAddress
from gpusoak.sim.nvml import HEALTH
from gpusoak.soak import Soak, SoakOptions
from gpusoak.verdict import gates
from gpusoak.verdict.gates import FAIL, PASS, SKIP, WARN, Reading, evaluate

GPU = PciAddress.parse("0000:18:00.0")


def _reading(at_s=0.0, aer=0, status="ok", na=None, **values):
    return Reading(at_s, NvmlHealth(str(GPU), status, "GPU-1", {**HEALTH, **values}, na or {}), aer)


def _by_name(results):
    return {g.name: (g.status, g.detail) for g in results}


@pytest.mark.parametrize("values, gate, status", [
    ({}, "retired_pages", PASS),
    ({"retired_pages_sbe": 50, "retired_pages_dbe": 13}, "retired_pages", FAIL),  # 63 >= 63
    ({"retired_pages_sbe": 40, "retired_pages_dbe": 16}, "retired_pages", FAIL),  # 16 DBE > 15
    ({"retired_pages_sbe": 40, "retired_pages_dbe": 15}, "retired_pages", PASS),
    ({"retired_pages_pending": True}, "retirement_pending", FAIL),
    ({"remapped_rows_pending": True}, "row_remap", FAIL),
    ({"remapped_rows_failure": True}, "row_remap_failure", FAIL),
    ({"remapped_rows_uncorrectable": 512}, "row_remap", WARN),
    ({"remapped_rows_uncorrectable": 511}, "row_remap", PASS),
    ({"ecc_uncorrected_volatile": 1}, "ecc_dbe_volatile", FAIL),
    ({"recovery_action": 1}, "recovery_action", FAIL),
])
def test_static_gates(values, gate, status):
    assert _by_name(evaluate(_reading(**values)))[gate][0] == status


def test_recovery_action_is_named():
    assert "gpu_reset" in _by_name(evaluate(_reading(recovery_action=1)))["recovery_action"][1]


def test_rates_need_two_readings_far_enough_apart():
    results = _by_name(evaluate(_reading(at_s=5.0), _reading(at_s=0.0)))
    assert results["pcie_replay_rate"][0] == SKIP and results["aer_corrected_rate"][0] == SKIP


def test_replay_and_aer_rates():
    before = _reading(at_s=0.0, aer=0, pcie_replay_count=100)
    ok = _by_name(evaluate(_reading(at_s=60.0, aer=30, pcie_replay_count=108), before))
    assert ok["pcie_replay_rate"][0] == PASS and ok["aer_corrected_rate"][0] == PASS
    bad = _by_name(evaluate(_reading(at_s=60.0, aer=61, pcie_replay_count=109), before))
    assert bad["pcie_replay_rate"] == (FAIL, "9.0 PCIe replays/min (limit 8)")
    assert bad["aer_corrected_rate"][0] == FAIL


def test_what_nvml_cannot_give_is_skipped_not_passed():
    r = _reading(na={"retired_pages_sbe": "nvmlDeviceGetRetiredPages: Not Supported"}, retired_pages_sbe=None)
    assert _by_name(evaluate(r))["retired_pages"] == (SKIP, "cannot look: nvmlDeviceGetRetiredPages: Not Supported")
    lost = _by_name(evaluate(Reading(0.0, NvmlHealth(str(GPU), "gpu_lost"), 0)))
    assert lost["retired_pages"] == (SKIP, "cannot look: NVML: gpu_lost")
    assert _by_name(evaluate(Reading(0.0, None, None)))["row_remap"][0] == SKIP


def test_limits_from_a_file(tmp_path):
    f = tmp_path / "gates.toml"
    f.write_text("[gates]\nretired_pages_max = 10\npcie_replay_per_min = 2\n")
    limits = gates_file.load(f)
    assert limits.retired_pages_max == 10 and limits.pcie_replay_per_min == 2.0 and limits.retired_pages_dbe_max == 15
    assert _by_name(evaluate(_reading(retired_pages_sbe=10), None, limits))["retired_pages"][0] == FAIL
    f.write_text("[gates]\nretired_pages = 10\n")
    with pytest.raises(UsageError, match="unknown gate limit"):
        gates_file.load(f)
    f.write_text("[gates]\nretired_pages_max = 'many'\n")
    with pytest.raises(UsageError, match="bad gate limit"):
        gates_file.load(f)


def _scenario(tmp_path, health):
    lines = ['[[gpu]]', 'bdf = "0000:18:00.0"', "[gpu.health]"] + [f"{k} = {v}" for k, v in health.items()]
    lines += ['[[gpu]]', 'bdf = "0000:2a:00.0"']
    path = tmp_path / "s.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_gpu_failing_the_gate_is_not_soaked(tmp_path):
    from gpusoak.sim import open_sim_node

    s = open_sim_node(_scenario(tmp_path, {"remapped_rows_pending": "true"}))
    try:
        soak = Soak(s.node, "r", SoakOptions(), s.node.gpus())
        soak.start(tmp_path / "j.jsonl")
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "skipped" and r.reason == "health_gate" and "row remap pending" in r.findings[0].detail
        assert soak.run_cycle(PciAddress.parse("0000:2a:00.0"), "flr", 1).outcome == "recovered"
    finally:
        s.node.close()


def test_the_gate_after_a_cycle_fails_it(tmp_path, sim):
    soak = Soak(sim.node, "r", SoakOptions(), [GPU])
    soak.start(tmp_path / "j.jsonl")
    sim.node.clock.sleep(60.0)
    sim.kernel.gpus[GPU].health["pcie_replay_count"] = 1000  # a replay storm during the soak
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == "failed" and r.reason == "gate_pcie_replay_rate"


def test_gates_module_names_its_source():
    assert "dcgm_gpu_hardware_limits.h" in gates.__doc__
