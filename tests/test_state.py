"""The node's saved state (state.json) and how it is put back."""

import json
import threading

import pytest

from gpusoak import state as node_state
from gpusoak.actions import ACTIONS, Context
from gpusoak.errors import Hung
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from tests.conftest import record

GPU = PciAddress.parse("0000:18:00.0")
AUDIO = PciAddress.parse("0000:18:00.1")
OTHER = PciAddress.parse("0000:2a:00.0")
CTX = Context()
TWO = ('[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\nfunctions = ["audio"]\n'
       '[[gpu]]\nbdf = "0000:2a:00.0"\n')


def _node(tmp_path, text=TWO):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return open_sim_node(str(path))


def test_restore_brings_a_removed_gpu_back_by_its_ports_bus_alone(tmp_path):
    s = _node(tmp_path)
    try:
        fn = s.node.sysfs.function
        s.kernel.write(fn(OTHER).path / "remove", "1")  # an operator took this one out on purpose
        saved = node_state.capture(s.node, [GPU], CTX)
        node_state.save(saved, tmp_path / "state.json")
        assert {f["bdf"]: f["upstream_port"] for f in json.loads((tmp_path / "state.json").read_text())["functions"]} \
            == {str(GPU): "0000:17:01.0", str(AUDIO): "0000:17:01.0"}
        for f in (AUDIO, GPU):  # a remove_rescan whose rescan never came
            s.kernel.write(fn(f).path / "remove", "1")
        seen = record(s)
        changes = node_state.restore(s.node, node_state.load(tmp_path / "state.json"), CTX)
        assert not [c for c in changes if c.startswith("FAILED")], changes
        assert fn(GPU).driver == "nvidia" and fn(AUDIO).driver == "snd_hda_intel"
        assert not fn(OTHER).present
        assert seen == [("bus/pci/devices/0000:17:01.0/pci_bus/0000:18/rescan", "1")]
    finally:
        s.node.close()


def test_state_json_keeps_reset_method_and_restore_puts_it_back(tmp_path):
    s = _node(tmp_path)
    try:
        fn = s.node.sysfs.function
        node_state.save(node_state.capture(s.node, [GPU], CTX), tmp_path / "state.json")
        saved = json.loads((tmp_path / "state.json").read_text())
        assert {f["bdf"]: f["reset_method"] for f in saved["functions"]} == {str(GPU): "flr bus", str(AUDIO): "flr"}
        s.kernel.write(fn(GPU).path / "reset_method", "bus")  # a bus_reset cut short left it narrowed
        changes = node_state.restore(s.node, node_state.load(tmp_path / "state.json"), CTX)
        assert fn(GPU).reset_methods == ("flr", "bus") and f"reset_method of {GPU} -> flr bus" in changes
    finally:
        s.node.close()


def _reset_blocks(s, gate, order):
    """Writes to the GPU's reset file block until ``gate`` is set (a reset stuck in the kernel)."""
    inner = s.node.sysfs._writer

    def writer(path, data):
        if path.name == "reset":
            gate.wait(60)
            order.append("reset returned")
        elif path.name == "reset_method":
            order.append(f"reset_method <- {data.strip()}")
        inner(path, data)

    s.node.sysfs._writer = writer


def test_restore_waits_for_a_reset_still_in_the_kernel_before_putting_reset_method_back(tmp_path):
    s = _node(tmp_path)
    gate, order = threading.Event(), []
    try:
        saved = node_state.capture(s.node, [GPU], CTX)
        _reset_blocks(s, gate, order)
        with pytest.raises(Hung):
            ACTIONS["flr"].perform(s.node, GPU, Context(write_timeout_s=5))
        assert order == ["reset_method <- flr"]  # the action did not write into the running reset
        threading.Timer(0.2, gate.set).start()
        changes = node_state.restore(s.node, saved, CTX, wait_s=3000)
        assert order == ["reset_method <- flr", "reset returned", "reset_method <- flr bus"], order
        assert not [c for c in changes if c.startswith("FAILED")], changes
    finally:
        gate.set()
        s.node.close()


def test_restore_leaves_a_function_alone_whose_write_never_returns_and_says_why(tmp_path):
    s = _node(tmp_path)
    gate, order = threading.Event(), []
    try:
        saved = node_state.capture(s.node, [GPU], CTX)
        _reset_blocks(s, gate, order)
        with pytest.raises(Hung):
            ACTIONS["flr"].perform(s.node, GPU, Context(write_timeout_s=5))
        changes = node_state.restore(s.node, saved, CTX, wait_s=5)
        (failed,) = [c for c in changes if c.startswith("FAILED")]
        assert failed.startswith(f"FAILED {GPU}: not restored: a write is still blocked in the kernel: flr reset")
        assert order == ["reset_method <- flr"]  # nothing written while the reset is in flight
        assert s.node.sysfs.function(GPU).reset_methods == ("flr",)
    finally:
        gate.set()
        s.node.close()
