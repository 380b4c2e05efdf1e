"""The mixed-fleet scenario through `gpusoak run`: every GPU gets the class written beside it;
plus plan, restore, the lock and a hang, as a user meets them."""

import fcntl
import json
import os
import time

import pytest

from gpusoak.sim import scenario as scenarios
from tests.e2e.conftest import gpusoak

NODES = scenarios.fleet("mixed-fleet")


def test_the_bundled_scenarios_cover_every_profile():
    profiles = {g.profile.NAME for n in scenarios.bundled() for g in scenarios.load(n).gpus}
    from gpusoak.sim.profiles import PROFILES

    assert profiles == set(PROFILES)
    assert len(NODES) >= 3


# The two single-node scenarios of issue 13: an HGX board with NVSwitches and a PCIe server.
NEW_NODES = ["hgx-h100-nvswitch", "pcie-4gpu"]


@pytest.mark.parametrize("node", NODES)
def test_expected_classes_match(node, tmp_path):
    sc = scenarios.load(node)
    done = gpusoak("run", "--backend", f"sim:{node}", "--actions", ",".join(sc.actions), "--report-dir", tmp_path, "-q",
                   "--sim-load", "in-process", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    got = {g["bdf"]: g["class"] for g in result["gpus"]}
    assert got == {str(g.bdf): g.expect for g in sc.gpus}, [g["evidence"] for g in result["gpus"]]


def test_plan_lists_the_exact_writes_and_does_nothing():
    done = gpusoak("plan", "--actions", "flr,vfio_cycle,module_reload", "--gpus", "0000:18:00.0", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    flr = plan["gpus"][0]["actions"]["flr"]["steps"]
    # The GPU is unbound from nvidia around the reset and bound back after it.
    assert [s.split(" > ")[0] for s in flr] == ["write '0000:18:00.0'", "write 'flr'", "write '1'",
                                                "write 'flr bus'", "write '0000:18:00.0'"]
    assert flr[0].endswith("/bus/pci/drivers/nvidia/unbind") and flr[-1].endswith("/bus/pci/drivers/nvidia/bind")
    assert flr[2].endswith("/bus/pci/devices/0000:18:00.0/reset")
    assert plan["gpus"][0]["actions"]["vfio_cycle"]["steps"][0].endswith("0000:18:00.0/driver_override")
    # The run stops nvidia-persistenced once, before its first cycle, and starts it after its last.
    assert plan["services"]["stop_before_first_cycle"] == plan["services"]["start_after_last_cycle"] == ["nvidia-persistenced"]
    (node_action,) = plan["node_actions"]
    assert node_action["refused"][0].startswith("driver_shared")  # one GPU of eight: the reload is everyone's
    steps = json.loads(gpusoak("plan", "--actions", "module_reload", "--json").stdout)["node_actions"][0]["steps"]
    assert "run rmmod nvidia_drm" in steps and steps.index("run rmmod nvidia") < steps.index("run modprobe nvidia")
    text = gpusoak("plan", "--actions", "module_reload").stdout
    assert "before the first cycle: systemctl stop nvidia-persistenced" in text
    kept = json.loads(gpusoak("plan", "--actions", "flr,module_reload", "--keep-services", "--json").stdout)
    assert kept["node_actions"][0]["refused"][-1].startswith("service_active: nvidia-persistenced active")
    assert kept["gpus"][0]["actions"]["flr"]["refused"][0].startswith("service_active: nvidia-persistenced active")


def test_restore_from_a_saved_state(tmp_path):
    done = gpusoak("run", "--cycles", "1", "--gpus", "0000:18:00.0", "--report-dir", tmp_path, "-q")
    assert done.returncode == 0
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["functions"][0] == {"bdf": "0000:18:00.0", "driver": "nvidia", "driver_override": None, "runtime_pm": "on",
                                     "upstream_port": "0000:17:01.0", "reset_method": "flr bus"}
    assert saved["settings"]["0000:18:00.0"]["compute_mode"] == "Default"
    done = gpusoak("restore", tmp_path / "state.json", "--backend", "sim")
    assert done.returncode == 0 and "nothing to change" in done.stdout
    done = gpusoak("restore", tmp_path / "nothing.json", "--backend", "sim")
    assert done.returncode == 2 and "cannot read state file" in done.stderr
    # The simulator's state file never drives this machine's modprobe, rescans and systemctl.
    done = gpusoak("restore", tmp_path / "state.json", "--backend", "real")
    assert done.returncode == 2 and "nothing restored" in done.stderr and "sim:h100-8gpu" in done.stderr


def test_a_second_run_is_refused_while_the_lock_is_held(tmp_path):
    lock = tmp_path / "gpusoak.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, json.dumps({"pid": 4242, "host": "n1", "run_id": "the-first-run", "since": "now"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        done = gpusoak("run", "--lock-file", lock, "--cycles", "1", "--report-dir", tmp_path / "r", "-q")
        assert done.returncode == 2
        assert "another gpusoak run holds this node: pid 4242 on n1, run the-first-run" in done.stdout + done.stderr
    finally:
        os.close(fd)


def test_a_hanging_write_ends_the_run_in_bounded_time(tmp_path):
    t = time.monotonic()
    done = gpusoak("run", "--backend", "sim:mixed-fleet/node-a", "--actions", "rebind", "--cycles", "3",
                   "--gpus", "0000:9a:00.0,0000:18:00.0", "--report-dir", tmp_path, "-q")
    assert time.monotonic() - t < 60
    assert done.returncode == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["run"]["outcomes"]["hung"] == 1 and result["run"]["outcomes"]["skipped"] == 2
    classes = {g["bdf"]: g["class"] for g in result["gpus"]}
    assert classes["0000:9a:00.0"] == "fail"
    assert (tmp_path / "junit.xml").exists() and (tmp_path / "report.html").exists()


def test_the_hgx_and_pcie_scenarios_give_each_gpu_its_class_for_its_own_reason(tmp_path):
    """Each GPU gets the class written beside it in its file, and each odd one for its reason."""
    reasons = {}
    for node in NEW_NODES:
        sc, out = scenarios.load(node), tmp_path / node
        done = gpusoak("run", "--backend", f"sim:{node}", "--actions", ",".join(sc.actions), "--report-dir", out,
                       "-q", "--sim-load", "in-process", timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        gpus = json.loads((out / "result.json").read_text())["gpus"]
        assert {g["bdf"]: g["class"] for g in gpus} == {str(g.bdf): g.expect for g in sc.gpus}, [g["evidence"] for g in gpus]
        for g in gpus:
            reasons[g["bdf"]] = (" | ".join(g["evidence"]), g.get("warnings") or [])
    assert "mig_enabled" in reasons["0000:2a:00.0"][0]
    assert "xid_119" in reasons["0000:5d:00.0"][0]
    assert any(w.startswith("no load and no post-check: bound to vfio-pci") for w in reasons["0000:17:00.0"][1])
    assert "post_check_cannot_load" in reasons["0000:17:00.0"][0]
    assert "fabric_not_completed" in reasons["0000:9a:00.0"][0]
    # The vfio-bound GPU was reset every cycle, and could not be shown to compute again: inconclusive.
    assert "40 cycle(s) a check could not look at: post_check_cannot_load" in reasons["0000:17:00.0"][0]
    assert "method_unsupported" in reasons["0000:31:00.0"][0]
    assert "link_width" in reasons["0000:b1:00.0"][0]
    assert any("x8 before any reset" in w for w in reasons["0000:ca:00.0"][1])


def test_a_vfio_bound_gpu_passes_on_sysfs_alone_only_when_the_post_check_is_turned_off(tmp_path):
    done = gpusoak("run", "--backend", "sim:pcie-4gpu", "--gpus", "0000:17:00.0", "--actions", "flr", "--cycles", 16,
                   "--post-check-seconds", 0, "--report-dir", tmp_path, "-q", "--sim-load", "in-process")
    assert done.returncode == 0, done.stderr[-2000:]
    (gpu,) = json.loads((tmp_path / "result.json").read_text())["gpus"]
    assert gpu["class"] == "pass" and gpu["actions"]["flr"]["successes"] == 16
