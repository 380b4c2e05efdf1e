"""The bridge route of bus_reset: what the kernel answers after the write (EAGAIN, ENOTTY)."""

import pytest

from gpusoak.model import FAILED, RECOVERED, SKIPPED, PciAddress
from gpusoak.schedule import Sequence
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")
AUDIO = PciAddress.parse("0000:18:00.1")
PORT = PciAddress.parse("0000:17:01.0")


def _node(tmp_path, extra=""):
    path = tmp_path / "multi.toml"
    path.write_text(f'[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "{GPU}"\n'
                    f'functions = ["audio"]\n{extra}')
    return open_sim_node(str(path))


@pytest.fixture
def multi(tmp_path):
    s = _node(tmp_path)
    yield s
    s.node.close()


def _cycle(sim, tmp_path):
    soak = Soak(sim.node, "r", SoakOptions(actions=("bus_reset",), ladder=False), [GPU])
    soak.start(tmp_path / "j.jsonl")
    return soak.run_cycle(GPU, "bus_reset", 1)


def test_a_busy_bus_lock_once_is_retried_and_the_gpu_recovers(multi, tmp_path):
    multi.kernel.hold_bus_lock(PORT, times=1)  # __pci_reset_bus: pci_bus_trylock failed, -EAGAIN
    r = _cycle(multi, tmp_path)
    assert r.outcome == RECOVERED, r.explain()
    assert multi.kernel.gpus[GPU].resets == 1


def test_a_bus_lock_busy_twice_skips_the_cycle_with_the_reason_and_binds_back(multi, tmp_path):
    multi.kernel.hold_bus_lock(PORT, times=None)
    r = _cycle(multi, tmp_path)
    assert r.outcome == SKIPPED and not r.attempted, r.explain()
    assert r.reason == "bus_busy" and "EAGAIN" in r.findings[0].detail
    assert multi.kernel.gpus[GPU].resets == 0  # nothing was reset
    assert multi.node.sysfs.function(GPU).driver == "nvidia"
    assert multi.node.sysfs.function(AUDIO).driver == "snd_hda_intel"
    # A busy bus is not the GPU taken out of service: a profile's sequence goes on cycling.
    seq = Sequence(str(GPU), "bus_reset")
    seq.record(r)
    assert seq.stopped == ""


def test_enotty_after_the_bridge_reset_is_a_failure_never_unsupported(tmp_path):
    # The device did not come back (pci_bridge_wait_for_secondary_bus): the same ENOTTY the
    # NO_BUS_RESET quirk gives, but the quirk is refused before the write, so this one failed.
    s = _node(tmp_path, 'profile = "d3cold-stuck"\np = 1.0\n')
    try:
        r = _cycle(s, tmp_path)
        assert r.outcome == FAILED, r.explain()
        assert "method_unsupported" not in [f.reason for f in r.findings]
        assert any("did not come back" in f.detail and "ENOTTY" in f.detail for f in r.findings), r.explain()
    finally:
        s.node.close()
