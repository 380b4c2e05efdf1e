"""`gpusoak inspect`: read-only, on the simulated node and on this machine (which has no NVIDIA GPU)."""

import json

import pytest

from gpusoak.inspect import EXIT_NO_GPU, inspect_node, render_table
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from tests.e2e.conftest import gpusoak

GPU = PciAddress.parse("0000:18:00.0")

SHARED = """\
[holders]
777 = "/dev/nvidia1"

[[gpu]]
bdf = "0000:18:00.0"
upstream = ["0000:15:01.0", "0000:16:00.0", "0000:17:00.0"]

[[gpu]]
bdf = "0000:19:00.0"
upstream = ["0000:15:01.0", "0000:16:00.0", "0000:17:00.0"]
"""


def test_every_section_and_nothing_written(sim, record_writes):
    report = inspect_node(sim.node)
    assert len(report["gpus"]) == 8 and record_writes == []
    g = report["gpus"][0]
    assert g["bdf"] == "0000:18:00.0" and g["vendor_device"] == "10de:2330" and g["driver"] == "nvidia"
    assert g["reset_methods"] == ["flr", "bus"]
    assert g["reset_domain"] == {"upstream_port": "0000:17:01.0", "behind_port": ["0000:18:00.0"],
                                 "bus_reset_safe": True, "why": "only this GPU's own functions sit behind the port"}
    assert g["iommu_group"]["members"] == ["0000:18:00.0"]
    assert g["power"] == {"state": "D0", "runtime_pm": "on"}
    # The simulated GPU idles at Gen1, as an NVIDIA GPU does: noted, not a fault.
    assert g["link"]["flags"] == ["speed 2.5 GT/s PCIe below 32.0 GT/s PCIe (normal at idle)"] and g["aer"] == {"correctable": 0, "nonfatal": 0, "fatal": 0}
    assert g["nvml"]["status"] == "ok" and g["nvml"]["uuid"].startswith("GPU-")
    assert {x["name"]: x["status"] for x in g["nvml"]["gate"]}["retired_pages"] == "pass"
    assert g["actions"]["flr"] == {"can_run": True, "why_not": []}
    text = render_table(report)
    assert "bus reset safe" in text and "action flr        can run" in text


def test_shared_domain_holders_degraded_link_and_fatal_events(tmp_path):
    path = tmp_path / "shared.toml"
    path.write_text(SHARED)
    s = open_sim_node(str(path))
    try:
        s.kernel.tree.set_attr(GPU, "current_link_width", "8")
        s.kernel.log(4, "NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=x, GPU has fallen off the bus.")
        first, second = inspect_node(s.node)["gpus"]
        assert first["reset_domain"]["bus_reset_safe"] is False
        assert "also resets 0000:19:00.0" in first["reset_domain"]["why"]
        assert first["link"]["flags"] == ["width degraded: x8 of x16",
                                          "speed 2.5 GT/s PCIe below 32.0 GT/s PCIe (normal at idle)"]
        assert [e["xid"] for e in first["recent_fatal_events"]] == [79]
        assert second["actions"]["flr"]["can_run"] is False
        assert "pid 777 (/dev/nvidia1 open)" in second["actions"]["flr"]["why_not"][0]
    finally:
        s.node.close()


def test_json_from_the_command_on_the_simulated_node():
    done = gpusoak("inspect", "--backend", "sim", "--json", "--gpus", "0000:9a:00.0")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [g["bdf"] for g in report["gpus"]] == ["0000:9a:00.0"]


def test_this_machine_has_no_nvidia_gpu_and_says_so():
    done = gpusoak("inspect")
    if done.returncode == 0:  # pragma: no cover - only on a GPU node
        pytest.skip("this machine has an NVIDIA GPU")
    assert done.returncode == EXIT_NO_GPU
    assert "no NVIDIA GPU found on this node" in done.stdout
    assert "nvml: unavailable" in done.stdout
