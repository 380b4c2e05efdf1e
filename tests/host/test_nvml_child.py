"""NVML never held by the soak process: each query is a child; the simulator models what holding it does.

The simulator follows the driver: an NVML session opens /dev/nvidiactl and, for each handle, the
GPU's /dev/nvidiaN (gpusoak/sim/nvml.py); an unbind waits while the device file is open
(nv_pci_remove); rmmod and nvidia-smi -r refuse. These tests fail on code that keeps an NVML
session in the soak process.
"""

import threading

import pynvml
import pytest

from gpusoak.host import nvml_child
from gpusoak.host.commands import CommandResult
from gpusoak.host.nvml import GPU_LOST, OK, Nvml, NvmlClient
from gpusoak.host.procs import own_device_files
from gpusoak.model import RECOVERED, REFUSED, PciAddress
from gpusoak.sim.nvml import SimNvmlLib
from gpusoak.sim.procs import NVIDIA_MAJOR, DeviceNumber
from gpusoak.soak import SELF_HELD, Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")
OTHER = PciAddress.parse("0000:2a:00.0")


def _in_process_session(sim):
    """What the soak did before: an NVML session in its own process, a handle per GPU."""
    nvml = Nvml.open(SimNvmlLib(sim.kernel))
    for bdf in (GPU, OTHER):
        nvml.handle(bdf)
    return nvml


def test_queries_leave_nothing_open_in_the_soak_process(sim):
    assert sim.node.nvml.health(GPU).status == OK
    assert sim.node.nvml.device_minor(OTHER) == 1
    assert sim.node.nvml.compute_pids(GPU) == []
    assert own_device_files(sim.node) is None
    assert sim.kernel.device_users(GPU) == [] and sim.kernel.device_users(OTHER) == []


def test_a_query_attaches_only_the_gpu_it_asks_about(sim):
    pid = sim.kernel.procs.spawn("probe")
    lib = SimNvmlLib(sim.kernel, pid)
    nvml = Nvml.open(lib)
    nvml.health(GPU)
    assert sim.kernel.device_users(GPU) == [pid] and sim.kernel.device_users(OTHER) == []
    nvml.close()
    assert sim.kernel.device_users(GPU) == []
    # A node-level query (NO_ATTACH) opens no GPU at all.
    assert nvml_child.answer("driver", None, SimNvmlLib(sim.kernel, pid)) == {"ok": True, "result": "570.124.06"}
    assert sim.kernel.procs.holders(DeviceNumber(NVIDIA_MAJOR, 0)) == []


def test_an_nvml_session_in_the_soak_process_is_a_holder_the_node_sees(sim):
    nvml = _in_process_session(sim)
    held = own_device_files(sim.node)
    assert held is not None and "nvidiactl" in held and "nvidia0" in held
    gpu_reset = sim.node.runner.run(["nvidia-smi", "-r", "-i", GPU.nvml_bus_id], timeout_s=10)
    assert gpu_reset.returncode == 255 and "In use by another client" in gpu_reset.stderr
    for module in ("nvidia_drm", "nvidia_modeset", "nvidia_uvm"):
        assert sim.node.runner.run(["rmmod", module], timeout_s=10).ok
    rmmod = sim.node.runner.run(["rmmod", "nvidia"], timeout_s=10)
    assert rmmod.returncode == 1 and "in use" in rmmod.stderr
    nvml.close()
    assert own_device_files(sim.node) is None


def test_an_unbind_waits_until_the_last_device_file_closes(sim):
    nvml = _in_process_session(sim)
    unbind = sim.node.sysfs.root / "bus" / "pci" / "drivers" / "nvidia" / "unbind"
    done = threading.Event()
    worker = threading.Thread(target=lambda: (sim.kernel.write(unbind, str(GPU)), done.set()), daemon=True)
    worker.start()
    assert not done.wait(0.3), "nv_pci_remove waits while the usage count is not zero"
    assert sim.node.sysfs.function(GPU).driver == "nvidia"
    nvml.close()
    assert done.wait(5) and sim.node.sysfs.function(GPU).driver is None
    records = [r.message for r in sim.node.kmsg.records_since(0)]
    assert f"NVRM: Attempting to remove device {GPU} with non-zero usage count!" in records


def test_a_handle_from_before_an_unbind_is_stale(sim):
    lib = SimNvmlLib(sim.kernel, sim.kernel.procs.spawn("old"))
    lib.nvmlInit()
    handle = lib.nvmlDeviceGetHandleByPciBusId(OTHER.nvml_bus_id)
    lib.nvmlShutdown()  # closed, so the unbind can go through
    drivers = sim.node.sysfs.root / "bus" / "pci" / "drivers" / "nvidia"
    sim.kernel.write(drivers / "unbind", str(OTHER))
    sim.kernel.write(drivers / "bind", str(OTHER))
    lib.nvmlInit()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        lib.nvmlDeviceGetUUID(handle)
    assert lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetHandleByPciBusId(OTHER.nvml_bus_id)).startswith("GPU-")
    lib.nvmlShutdown()


def test_the_soak_refuses_to_act_while_its_own_process_holds_a_gpu(sim, tmp_path):
    soak = Soak(sim.node, "r", SoakOptions(actions=("rebind",)), [GPU])
    soak.start(tmp_path / "journal.jsonl")
    assert soak.run_cycle(GPU, "rebind", 1).outcome == RECOVERED  # NVML released: the cycle runs
    nvml = _in_process_session(sim)
    result = soak.run_cycle(GPU, "rebind", 2)
    nvml.close()
    assert result.outcome == REFUSED and result.findings[0].reason == SELF_HELD
    assert "nvidia0" in result.findings[0].detail


class _Runner:
    def __init__(self, result):
        self.result = result

    def run(self, argv, *, timeout_s):
        return CommandResult(tuple(argv), *self.result)


@pytest.mark.parametrize("result, text", [
    ((None, "", "", 30.0), "did not answer within 30 s"),
    ((1, "", "Traceback ...\nModuleNotFoundError: No module named 'pynvml'\n", 0.1), "No module named 'pynvml'"),
])
def test_a_child_that_hangs_or_crashes_is_a_query_that_could_not_look(sim, result, text):
    from gpusoak import verify

    client = NvmlClient(_Runner(result))
    sim.node.nvml = client
    snap = verify.snapshot(sim.node, GPU)
    assert snap.nvml_status.startswith("unavailable: NVML could not look") and text in snap.nvml_status
    (check,) = [c for c in verify.compare(snap, snap) if c.name == "nvml"]
    assert check.status == verify.BLIND  # could not look: never a pass
    assert client.device_minor(GPU) is None


def test_a_gpu_lost_mid_run_is_a_status_not_an_error(sim):
    sim.kernel.gpus[GPU].alive = False
    assert sim.node.nvml.health(GPU).status == GPU_LOST
    assert sim.node.nvml.device_minor(GPU) is None


def test_a_cuda_context_in_the_soak_process_is_seen_by_its_nvidia_uvm_descriptor(sim):
    fd = sim.kernel.procs.open(sim.node.pid, "nvidia-uvm")  # the uvm node alone, as a leaked context keeps it
    held = own_device_files(sim.node)
    sim.kernel.procs.close(sim.node.pid, fd)
    assert held is not None and "nvidia-uvm" in held
