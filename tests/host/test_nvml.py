"""NVML: not supported is NA, lost and reset-required are statuses, a missing library is a reason."""

from types import SimpleNamespace

import pynvml
import pytest

from gpusoak.errors import AccessDenied, NvmlFailure, NvmlUnavailable
from gpusoak.host.nvml import GPU_LOST, NA, NOT_FOUND, OK, RESET_REQUIRED, Nvml
from gpusoak.model import PciAddress

GPU = PciAddress.parse("0000:65:00.0")


class FakeLib:
    """pynvml's surface for one GPU; ``fail`` maps a function name to the pynvml error it raises."""

    def __init__(self, fail=None):
        self.fail = fail or {}
        self.calls = []

    def __getattr__(self, name):
        if name.startswith(("NVMLError", "NVML_")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def _go(self, name, value):
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]
        return value

    def nvmlInit(self):
        return self._go("nvmlInit", None)

    def nvmlShutdown(self):
        return None

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        assert bus_id == "00000000:65:00.0"
        return self._go("nvmlDeviceGetHandleByPciBusId", "h")

    def nvmlDeviceGetUUID(self, h):
        return self._go("nvmlDeviceGetUUID", "GPU-11111111-2222-3333-4444-555555555555")

    def nvmlDeviceGetName(self, h):
        return self._go("nvmlDeviceGetName", "NVIDIA H100 80GB HBM3")

    def nvmlDeviceGetMemoryInfo(self, h):
        return self._go("nvmlDeviceGetMemoryInfo", SimpleNamespace(total=85899345920, used=1, free=2))

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._go("nvmlDeviceGetTemperature", 35)

    def nvmlDeviceGetPowerUsage(self, h):
        return self._go("nvmlDeviceGetPowerUsage", 70123)

    def nvmlDeviceGetPersistenceMode(self, h):
        return self._go("nvmlDeviceGetPersistenceMode", 1)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return self._go("nvmlDeviceGetCurrPcieLinkGeneration", 5)

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return self._go("nvmlDeviceGetCurrPcieLinkWidth", 16)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return self._go("nvmlDeviceGetMaxPcieLinkGeneration", 5)

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return self._go("nvmlDeviceGetMaxPcieLinkWidth", 16)

    def nvmlDeviceGetTotalEccErrors(self, h, t, c):
        return self._go("nvmlDeviceGetTotalEccErrors", 0)

    def nvmlDeviceGetRemappedRows(self, h):
        return self._go("nvmlDeviceGetRemappedRows", (1, 0, 0, 0))


def test_healthy_read():
    h = Nvml.open(FakeLib()).health(GPU)
    assert h.status == OK and h.uuid.startswith("GPU-")
    assert h.values["power_mw"] == 70123 and h.values["persistence_mode"] is True
    assert h.values["remapped_rows_correctable"] == 1
    # What this fake lacks reads as NA with a reason, never as a healthy zero.
    assert h.values["pcie_replay_count"] is None and "not in this nvidia-ml-py" in h.na["pcie_replay_count"]
    assert "remapped_rows_correctable" not in h.na


def test_not_supported_and_missing_functions_are_na_with_reason():
    lib = FakeLib({"nvmlDeviceGetRemappedRows": pynvml.NVMLError_NotSupported(),
                   "nvmlDeviceGetPowerUsage": pynvml.NVMLError_FunctionNotFound()})
    h = Nvml.open(lib).health(GPU)
    assert h.status == OK
    assert h.values["remapped_rows_pending"] is None and "Not Supported" in h.na["remapped_rows_pending"]
    assert h.values["power_mw"] is None and "nvmlDeviceGetPowerUsage" in h.na["power_mw"]
    assert not NA("x")  # NA never reads as a true, healthy value


@pytest.mark.parametrize("where", ["nvmlDeviceGetHandleByPciBusId", "nvmlDeviceGetUUID", "nvmlDeviceGetTemperature"])
def test_gpu_lost_is_a_status_wherever_it_surfaces(where):
    h = Nvml.open(FakeLib({where: pynvml.NVMLError_GpuIsLost()})).health(GPU)
    assert h.status == GPU_LOST and h.uuid is None


def test_reset_required_and_not_found():
    assert Nvml.open(FakeLib({"nvmlDeviceGetUUID": pynvml.NVMLError_ResetRequired()})).health(GPU).status == RESET_REQUIRED
    assert Nvml.open(FakeLib({"nvmlDeviceGetHandleByPciBusId": pynvml.NVMLError_NotFound()})).health(GPU).status == NOT_FOUND


def test_permission_and_unknown_errors_are_errors_of_their_field_not_na_without_a_reason():
    # Not "unsupported" (that is NA with the driver's word): an error, kept with the field. The
    # read itself fails only where the GPU's status comes from (handle, UUID, memory info).
    h = Nvml.open(FakeLib({"nvmlDeviceGetPowerUsage": pynvml.NVMLError_NoPermission()})).health(GPU)
    assert h.status == OK and h.values["power_mw"] is None and h.na["power_mw"].startswith("error: ")
    h = Nvml.open(FakeLib({"nvmlDeviceGetName": pynvml.NVMLError_Unknown()})).health(GPU)
    assert h.status == OK and h.na["name"].startswith("error: ")
    with pytest.raises(AccessDenied):
        Nvml.open(FakeLib({"nvmlDeviceGetUUID": pynvml.NVMLError_NoPermission()})).health(GPU)
    with pytest.raises(NvmlFailure):
        Nvml.open(FakeLib({"nvmlDeviceGetMemoryInfo": pynvml.NVMLError_Unknown()})).health(GPU)


def test_driver_not_loaded_is_unavailable_with_its_reason():
    with pytest.raises(NvmlUnavailable) as err:
        Nvml.open(FakeLib({"nvmlInit": pynvml.NVMLError_DriverNotLoaded()}))
    assert "NVML not available" in str(err.value) and "Driver Not Loaded" in str(err.value)


def test_the_real_library_on_a_machine_without_a_driver():
    # This machine (and CI's) has no NVIDIA driver: the real nvidia-ml-py must say so, cleanly.
    try:
        nvml = Nvml.open()
    except NvmlUnavailable as err:
        assert "NVML not available" in str(err)
    else:  # pragma: no cover - only on a GPU node
        nvml.close()
        pytest.skip("an NVIDIA driver is present here")


def test_one_field_that_fails_is_na_with_its_error_not_a_failed_read(sim):
    # A driver that predates a field, or NoPermission on one counter, must not fail the health
    # read: the GPU's status comes from its handle, UUID and memory info.
    from gpusoak.model import PciAddress

    gpu = PciAddress.parse("0000:18:00.0")
    sim.kernel.fail_nvml(gpu, "nvmlDeviceGetPowerUsage", "NoPermission")
    sim.kernel.fail_nvml(gpu, "nvmlDeviceGetTotalEccErrors", "Unknown")
    h = sim.node.nvml.health(gpu)
    assert h.status == "ok" and h.uuid and h.values["power_mw"] is None
    assert h.na["power_mw"].startswith("error: ") and "Permission" in h.na["power_mw"]
    assert h.values["ecc_corrected_volatile"] is None and h.values["temperature_c"] == 33
    sim.kernel.fail_nvml(gpu, "nvmlDeviceGetMemoryInfo", "Unknown")  # a status-defining read still fails
    with pytest.raises(NvmlFailure):
        sim.node.nvml.health(gpu)


def test_a_version_checked_call_on_an_older_driver_falls_back_to_the_older_symbol(sim):
    # nvidia-ml-py raises NVMLLibraryMismatchError, a plain Exception, from its version-checked
    # process queries when the driver's NVML lacks the newest symbol.
    from gpusoak.model import PciAddress

    gpu = PciAddress.parse("0000:18:00.0")
    sim.kernel.fail_nvml(gpu, "nvmlDeviceGetComputeRunningProcesses", "LibraryMismatch")
    assert sim.node.nvml.compute_pids(gpu) == []  # answered by _v2, not None (could not say)
    assert sim.node.nvml.health(gpu).values["compute_pids"] == []
