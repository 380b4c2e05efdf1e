"""The soak's side of the load child: it starts with its own GPU alone visible to CUDA."""

import sys

from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions

GPU = PciAddress.parse("0000:2a:00.0")
TWO = ('[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n'
       '[[gpu]]\nbdf = "0000:2a:00.0"\n[[gpu]]\nbdf = "0000:3a:00.0"\n')


def _node(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TWO)
    return open_sim_node(str(path))


def test_without_cuda_visible_devices_a_cuda_process_holds_every_gpu_open(tmp_path):
    # What the simulated node's CUDA does, as a real one does: every visible GPU's node is opened.
    s = _node(tmp_path)
    try:
        argv = [sys.executable, "-m", "gpusoak.load", "--bdf", str(GPU), "--seconds", "0.01"]
        s.node.runner.run(argv, timeout_s=60)
        (child,) = s.node.runner.loads
        assert sorted(child.opened) == ["nvidia-uvm", "nvidia0", "nvidia1", "nvidia2", "nvidiactl"]
        assert s.kernel.procs.holders(s.kernel.procs.devices["nvidia1"]) == []  # closed when it exited
    finally:
        s.node.close()


def test_the_load_child_opens_only_its_own_gpu(tmp_path):
    s = _node(tmp_path)
    try:
        soak = Soak(s.node, "r", SoakOptions(load_seconds=1.0, post_check_seconds=0.5), [GPU])
        soak.start(tmp_path / "j.jsonl")
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "recovered", r.explain()
        load, post = s.node.runner.loads
        for child in (load, post):
            assert child.env == {"CUDA_VISIBLE_DEVICES": soak.baselines[GPU].uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
            assert sorted(child.opened) == ["nvidia-uvm", "nvidia1", "nvidiactl"]
    finally:
        s.node.close()


def test_a_gpu_without_a_uuid_in_its_baseline_gets_no_load_child(tmp_path):
    s = _node(tmp_path)
    try:
        s.node.nvml, s.node.nvml_unavailable = None, "libnvidia-ml.so.1 not found (test)"
        soak = Soak(s.node, "r", SoakOptions(load_seconds=1.0), [GPU])
        soak.start(tmp_path / "j.jsonl")
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "refused" and r.reason == "load_no_gpu_uuid", r.explain()
        assert "every GPU" in r.findings[0].detail and s.node.runner.loads == []
    finally:
        s.node.close()
