"""`python -m gpusoak.load`: its JSON and exit codes; the GPU path where a GPU exists."""

import json
import subprocess
import sys

import pytest

SMALL = ["--array", "numpy", "--seconds", "0.05", "--gemm-size", "32", "--vram-bytes", "1048576", "--chunk-bytes", "262144"]


def load(*args):
    done = subprocess.run([sys.executable, "-m", "gpusoak.load", *args], capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_numpy_run_passes_with_its_figures():
    code, doc = load("--bdf", "0000:18:00.0", *SMALL)
    assert code == 0 and doc["ok"] is True and doc["verdict"] == "ok" and doc["exit"] == 0 and doc["device"] == "cpu (numpy)"
    assert [g["kind"] for g in doc["gemm"]] == ["float16", "float16-exact", "float32", "float32-exact"]
    assert all(g["tflops"] > 0 and g["products"] >= 1 for g in doc["gemm"])
    assert doc["vram"]["bytes_total"] == 1048576 and doc["vram"]["mismatched_words"] == 0
    assert doc["vram"]["passes"] >= 1 and doc["window"]["busy_share"] > 0 and doc["window"]["batches"] >= 5
    assert set(doc["window"]["unavailable"]) == {"bfloat16", "bfloat16-exact"}  # numpy has none: said
    assert doc["telemetry"] == {"unavailable": "the CPU load has no GPU to sample"} and doc["peak_share"] is None
    assert doc["plan"]["exact_k"] == {"float16": 32, "bfloat16": 32, "float32": 32}
    assert isinstance(doc["pid"], int)


def test_corruption_is_reported_and_fails():
    code, doc = load("--bdf", "0000:18:00.0", *SMALL, "--inject-corruption", "5")
    # Five words of the first chunk flipped after each write: caught at every read-back, at word 0.
    v = doc["vram"]
    assert code == 10 and doc["verdict"] == "wrong_result" and doc["ok"] is False
    assert v["mismatched_words"] >= 5 and v["mismatched_words"] % 5 == 0 and v["first_bad_word"] == 0


def test_missing_cupy_names_the_extras():
    pytest.importorskip  # noqa: B018 - documents that this runs only where cupy is absent
    try:
        import cupy  # noqa: F401
        pytest.skip("cupy is installed here")
    except ImportError:
        pass
    code, doc = load("--bdf", "0000:18:00.0", "--seconds", "0.1")
    assert code == 12 and doc["verdict"] == "unavailable" and "gpusoak[cuda12]" in doc["error"] and "gpusoak[cuda13]" in doc["error"]


@pytest.mark.parametrize("args", [("--bdf", "../../x", *SMALL), ("--bdf", "0000:18:00.0", *SMALL, "--fraction", "1.5")])
def test_bad_options(args):
    code, doc = load(*args)
    assert code == 11 and doc["verdict"] == "bad_option" and doc["error"]


def test_the_gpu_path_on_a_gpu():
    cp = pytest.importorskip("cupy", reason="the GPU path needs cupy and an NVIDIA GPU (gpusoak[cuda12|13])")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as err:  # pragma: no cover - only where cupy exists
        pytest.skip(f"no usable CUDA device: {err}")
    if count == 0:  # pragma: no cover
        pytest.skip("no CUDA device")
    bus_id = cp.cuda.runtime.deviceGetPCIBusId(0).lower()  # pragma: no cover
    code, doc = load("--bdf", bus_id[-12:] if len(bus_id) > 12 else bus_id, "--seconds", "4",
                     "--fraction", "0.2")  # pragma: no cover
    fp16 = next(g for g in doc["gemm"] if g["kind"] == "float16")  # pragma: no cover
    assert code == 0 and doc["device"] == "cuda:0" and fp16["tflops"] > 1  # pragma: no cover
    assert doc["window"]["busy_share"] > 0.5 and doc["vram"]["passes"] >= 1  # pragma: no cover


def test_a_cuda_stack_that_cannot_give_a_device_is_unavailable_not_the_gpus_failure():
    # A cupy built for a newer CUDA than the driver, NVRTC missing, or no device visible: gpusoak's
    # install, not the GPU (unavailable refuses the cycle); only "the GPU is lost" fails it.
    from gpusoak.load import protocol
    from gpusoak.load.__main__ import _setup_verdict

    for text in ("cudaErrorInsufficientDriver: CUDA driver version is insufficient",
                 "NVRTC_ERROR: libnvrtc.so.12: cannot open shared object file",
                 "cudaErrorNoDevice: no CUDA-capable device is detected"):
        assert _setup_verdict(RuntimeError(text)) == protocol.UNAVAILABLE, text
    assert _setup_verdict(RuntimeError("cudaErrorDevicesUnavailable: all CUDA-capable devices are busy or "
                                       "unavailable")) == protocol.GPU_FAILED
