"""XIDs through NVML's event API, as a second source beside the kernel log."""

from gpusoak.host.nvml_events import XidWatch
from gpusoak.model import PciAddress
from gpusoak.soak import Soak, SoakOptions
from tests.conftest import after_reset

GPU = PciAddress.parse("0000:18:00.0")
OTHER = PciAddress.parse("0000:2a:00.0")


def test_watch_sees_only_its_device_and_only_after_registering(sim):
    sim.kernel.xid(GPU, 79, "GPU has fallen off the bus.")  # before registration: lost, as in NVML
    watch = XidWatch(sim.node.nvml, GPU)
    sim.kernel.xid(OTHER, 48, "DBE")
    sim.kernel.xid(GPU, 13, "Graphics Exception")
    (event,) = watch.drain()
    assert (event.kind, event.xid, event.pci, event.action) == ("xid", 13, str(GPU), "RESTART_APP")
    assert watch.drain() == []
    watch.close()


def test_unsupported_event_api_is_na_with_reason(sim):
    sim.node.nvml.lib.nvmlDeviceGetSupportedEventTypes = lambda h: 0
    watch = XidWatch(sim.node.nvml, GPU)
    assert watch.na == "XID events not supported on this device" and watch.drain() == []


def test_an_xid_seen_only_by_nvml_fails_the_cycle(sim, tmp_path, record_writes):
    soak = Soak(sim.node, "r", SoakOptions(), [GPU])
    soak.start(tmp_path / "j.jsonl")
    # NVML reports it; the kernel log does not
    after_reset(sim, lambda: [es.deliver(GPU, 95) for es in sim.kernel.event_sets])
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == "failed" and r.reason == "xid_95"
    assert r.findings[0].detail == "NVML event: Xid 95 on 0000:18:00.0"


def test_one_xid_from_two_sources_is_one_finding(sim, tmp_path, record_writes):
    soak = Soak(sim.node, "r", SoakOptions(), [GPU])
    soak.start(tmp_path / "j.jsonl")
    after_reset(sim, lambda: sim.kernel.xid(GPU, 79, "GPU has fallen off the bus."))
    r = soak.run_cycle(GPU, "flr", 1)
    assert [f.reason for f in r.findings].count("xid_79") == 1
    assert sorted(e.text.split(":")[0] for e in r.events) == ["NVML event", "NVRM"]
