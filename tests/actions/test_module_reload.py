"""module_reload never strands the node: what it checks before the first rmmod, on the simulator.

The simulator answers modinfo and modprobe --show-depends from its /lib/modules (kmod's output and
wording), and keeps /sys/module/*/holders/ as kernel/module/sysfs.c does (gpusoak.sim.modules).
"""

import pytest

from gpusoak.actions import ACTIONS, Context
from gpusoak.actions.base import CANNOT_RELOAD, DRIVER_MISMATCH, HELD_BY_MODULE
from gpusoak.model import REFUSED
from gpusoak.plan import make, render
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions

NO_SERVICES = '[services]\nnvidia-persistenced = "inactive"\n'
GPU = '[[gpu]]\nbdf = "0000:18:00.0"\n'
CTX = Context()
RELOAD = ACTIONS["module_reload"]


@pytest.fixture
def node_of(tmp_path):
    opened = []

    def make_node(extra=""):
        path = tmp_path / f"s{len(opened)}.toml"
        path.write_text(extra + "\n" + NO_SERVICES + GPU)
        s = open_sim_node(str(path))
        opened.append(s)
        return s

    yield make_node
    for s in opened:
        s.node.close()


def _changing(calls):
    return [c for c in calls if c[0] in ("rmmod", "modprobe") and "--show-depends" not in c]


def test_a_driver_upgraded_on_disk_is_refused_before_any_rmmod(node_of):
    s = node_of('driver_on_disk = "575.51.02"')
    (refusal,) = RELOAD.refusals(s.node, None, CTX)
    assert refusal.reason == DRIVER_MISMATCH
    assert "575.51.02" in refusal.detail and "570.124.06" in refusal.detail
    # Through a soak: the cycle is refused and nothing is unloaded, so the old driver stays loaded.
    soak = Soak(s.node, "r", SoakOptions(actions=("module_reload",), ladder=False), s.node.gpus())
    soak.start(s.root / "j.jsonl")
    (r,) = soak.run_node_cycle("module_reload", 1)
    assert r.outcome == REFUSED and r.findings[0].reason == DRIVER_MISMATCH
    assert _changing(s.node.runner.calls) == []
    assert s.node.driver_version() == "570.124.06"


def test_a_container_without_lib_modules_is_refused_and_keeps_its_driver(node_of):
    s = node_of("lib_modules = false")
    refusals = RELOAD.refusals(s.node, None, CTX)
    assert [f.reason for f in refusals] == [CANNOT_RELOAD]
    assert f"/lib/modules/{s.node.kernel}" in refusals[0].detail
    plan = render(make(s.node, s.node.gpus(), SoakOptions(actions=("module_reload",))))
    assert "node module_reload: REFUSED: cannot_reload:" in plan
    # Why: performed anyway, rmmod succeeds and modprobe cannot load the driver back.
    with pytest.raises(Exception, match="not found in directory"):
        RELOAD.perform(s.node, None, CTX)
    assert s.node.driver_version() is None and s.node.sysfs.function(s.node.gpus()[0]).driver is None


def test_a_module_file_missing_on_disk_is_refused(node_of):
    s = node_of()
    (s.root / "lib" / "modules" / s.node.kernel / "updates" / "dkms" / "nvidia-uvm.ko.zst").unlink()
    (refusal,) = RELOAD.refusals(s.node, None, CTX)
    assert refusal.reason == CANNOT_RELOAD and "nvidia-uvm.ko.zst" in refusal.detail


def test_a_third_party_holder_of_nvidia_is_refused_by_name(node_of):
    s = node_of('modules = ["nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_drm", "gdrdrv"]')
    (refusal,) = RELOAD.refusals(s.node, None, CTX)
    assert refusal.reason == HELD_BY_MODULE and "gdrdrv" in refusal.detail
    # The simulated kernel agrees: rmmod nvidia names it as kmod does.
    r = s.node.runner.run(["rmmod", "nvidia"], timeout_s=5)
    assert r.stderr == "rmmod: ERROR: Module nvidia is in use by: gdrdrv nvidia_modeset nvidia_uvm\n"


def test_dependents_come_from_holders_and_unload_in_dependency_order(node_of):
    s = node_of('modules = ["nvidia", "nvidia_peermem", "nvidia_modeset", "nvidia_uvm", "nvidia_drm"]')
    assert RELOAD.refusals(s.node, None, CTX) == []
    assert [str(x) for x in RELOAD.steps(s.node, None, CTX)] == [
        "run rmmod nvidia_drm", "run rmmod nvidia_modeset", "run rmmod nvidia_uvm", "run rmmod nvidia_peermem",
        "run rmmod nvidia", "run modprobe nvidia", "run modprobe nvidia_peermem", "run modprobe nvidia_uvm",
        "run modprobe nvidia_modeset", "run modprobe nvidia_drm"]
    s.node.runner.calls.clear()
    RELOAD.perform(s.node, None, CTX)
    assert [c[1] for c in _changing(s.node.runner.calls) if c[0] == "rmmod"] == [
        "nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia_peermem", "nvidia"]
    assert s.kernel.modules == {"nvidia", "nvidia_peermem", "nvidia_modeset", "nvidia_uvm", "nvidia_drm"}
    assert sorted(p.name for p in (s.node.sysfs.root / "module" / "nvidia" / "holders").iterdir()) == [
        "nvidia_modeset", "nvidia_peermem", "nvidia_uvm"]


@pytest.mark.parametrize("options, root", [
    ("", "/"), ("-d /srv/guest", "/srv/guest"), ("--dirname=/a -q", "/a"), ("-q -d/b", "/b"), ("-d /a -d /c", "/c"),
])
def test_the_root_modprobe_reads_is_the_one_checked(options, root):
    from pathlib import Path

    from gpusoak.host.node import modprobe_dirname

    assert modprobe_dirname(options) == Path(root)  # MODPROBE_OPTIONS, as modprobe prepends it
