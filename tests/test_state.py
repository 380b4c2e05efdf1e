"""The node's saved state (state.json) and how it is put back."""

import json

from gpusoak import state as node_state
from gpusoak.actions import Context
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
