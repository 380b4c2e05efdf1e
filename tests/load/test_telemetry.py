"""What the load child reads from NVML while it loads, against the simulator's pynvml-compatible
library, and the datasheet table its figures are shares of."""

import pytest

from gpusoak.load import peaks, telemetry
from gpusoak.model import PciAddress
from gpusoak.sim.nvml import SimNvmlLib

GPU = PciAddress.parse("0000:18:00.0")


def test_it_samples_power_clock_temperature_and_utilisation_while_the_load_runs(sim):
    pid = sim.kernel.procs.spawn("load child")
    with telemetry.Sampler(SimNvmlLib(sim.kernel, pid), GPU, period_s=0.02) as s:
        assert sim.kernel.device_users(GPU) == [pid]  # the child holds its own GPU, as CUDA does
        telemetry.wait_one_period(0.02)
    summary = s.summary()
    assert summary["power_w"]["mean"] == 71.0 and summary["power_w"]["samples"] >= 3  # NVML gives mW
    assert summary["sm_clock_mhz"]["min"] == 1980 and summary["temperature_c"]["max"] == 33
    assert "utilisation_pct" in summary and summary["missing"] == {}
    assert sim.kernel.device_users(GPU) == []  # nvmlShutdown: nothing held after the load


def test_a_reading_the_part_does_not_support_is_named_and_the_others_kept(sim):
    lib = SimNvmlLib(sim.kernel, sim.kernel.procs.spawn("load child"))

    class NoPower:
        def __getattr__(self, name):
            if name == "nvmlDeviceGetPowerUsage":
                def unsupported(h):
                    raise lib.NVMLError(lib.NVML_ERROR_NOT_SUPPORTED)
                return unsupported
            return getattr(lib, name)

    with telemetry.Sampler(NoPower(), GPU, period_s=10) as s:
        pass
    summary = s.summary()
    assert "power_w" not in summary and "NVMLError" in summary["missing"]["power_w"]
    assert summary["temperature_c"]["samples"] == 2  # before and after


def test_no_nvml_is_a_value_with_its_reason():
    with telemetry.Sampler(None, GPU, why="nvidia-ml-py is not installed") as s:
        pass
    assert s.summary() == {"unavailable": "nvidia-ml-py is not installed"}


def test_a_gpu_nvml_cannot_give_is_unavailable_not_an_error(sim):
    with telemetry.Sampler(SimNvmlLib(sim.kernel), PciAddress.parse("0000:ee:00.0"), period_s=10) as s:
        pass
    assert "NVML could not give the GPU" in s.summary()["unavailable"]


def test_the_peaks_table_gives_shares_of_the_datasheet_figures():
    h100 = peaks.peak_of(b"NVIDIA H100 80GB HBM3")  # NVML may give bytes
    assert h100 is not None and h100.fp16_tflops == 989.5 and h100.memory_gbps == 3350 and h100.sparse_halved
    assert peaks.peak_of("NVIDIA L40S").fp16_tflops == 362.05 and not peaks.peak_of("NVIDIA L40S").sparse_halved
    got = peaks.shares("NVIDIA H200", {"float16": 700.0, "float32": 50.0}, 4000.0)
    assert got == {"float16": pytest.approx(700 / 989.5, abs=1e-4), "float32": pytest.approx(50 / 67, abs=1e-4),
                   "fill": pytest.approx(4000 / 4800, abs=1e-4)}
    assert peaks.shares("NVIDIA GeForce RTX 4090", {"float16": 1.0}, 1.0) is None
    for name, p in peaks.PEAKS.items():  # dense below sparse-derived, tensor above plain fp32
        assert name.startswith("NVIDIA ") and p.fp16_tflops > p.tf32_tflops > 0 and p.memory_gbps > 500
