"""The simulated node: laid out like the kernel's tree, answering writes the way the kernel does."""

import errno
import os

import pynvml
import pytest

from gpusoak.errors import ScenarioError
from gpusoak.host.nvml import GPU_LOST, OK
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.sim import scenario as scenarios
from gpusoak.sim.nvml import SimNvmlLib

FLAKY = PciAddress.parse("0000:9a:00.0")
HEALTHY = PciAddress.parse("0000:18:00.0")


def _scenario(tmp_path, gpus, **top):
    lines = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in top.items()]
    for g in gpus:
        lines.append("[[gpu]]")
        lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in g.items()]
    path = tmp_path / "s.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


def test_default_scenario_is_eight_h100s_one_flaky(sim):
    assert len(sim.node.gpus()) == 8
    expected = {str(g.bdf): g.expect for g in sim.scenario.gpus}
    assert list(expected.values()).count("fail") == 1 and expected[str(FLAKY)] == "fail"


def test_tree_is_laid_out_like_the_kernels(sim):
    root = sim.node.sysfs.root
    link = root / "bus" / "pci" / "devices" / str(HEALTHY)
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    real = link.resolve()
    assert real.relative_to(root / "devices").parts == ("pci0000:17", "0000:17:01.0", "0000:18:00.0")
    assert os.readlink(real / "driver").endswith("bus/pci/drivers/nvidia")
    assert (root / "bus" / "pci" / "drivers" / "nvidia" / str(HEALTHY)).resolve() == real
    assert (real / "power_state").read_text() == "D0\n"
    assert (real / "current_link_speed").read_text() == "2.5 GT/s PCIe\n"  # idle: NVIDIA lowers the generation
    assert (real / "max_link_speed").read_text() == "32.0 GT/s PCIe\n"
    assert (real / "aer_dev_correctable").read_text().splitlines()[-1] == "TOTAL_ERR_COR 0"
    assert (root / "module" / "nvidia" / "version").read_text() == "570.124.06\n"


def test_failed_flr_looks_like_the_real_thing(tmp_path):
    path = _scenario(tmp_path, [{"bdf": "0000:9a:00.0", "profile": "flaky-flr", "p": 1.0}])
    s = open_sim_node(str(path))
    try:
        node, fn = s.node, s.node.sysfs.function(FLAKY)
        cursor = node.kmsg.cursor()
        start = node.clock.monotonic()
        with pytest.raises(OSError) as err:
            s.kernel.write(fn.path / "reset", "1")
        assert err.value.errno == errno.ENOTTY
        assert node.clock.monotonic() - start == pytest.approx(65.535)
        (rec,) = node.kmsg.records_since(cursor)
        assert rec.message == "nvidia 0000:9a:00.0: not ready 65535ms after FLR; giving up"
        assert rec.level == 4 and rec.field("DEVICE") == "+pci:0000:9a:00.0"
        assert (fn.link.current_speed, fn.link.current_width) == ("Unknown", 63)
        assert node.nvml.health(FLAKY).status == GPU_LOST
        lib = SimNvmlLib(s.kernel)
        lib.nvmlInit()
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            lib.nvmlDeviceGetHandleByPciBusId(FLAKY.nvml_bus_id)
    finally:
        s.node.close()


def test_healthy_flr_retrains_the_link_then_settles(sim):
    # Reset unbound: under a bound nvidia the reset loses the GPU (tests/sim/test_driver_reset.py).
    fn = sim.node.sysfs.function(HEALTHY)
    drv = sim.node.sysfs.root / "bus" / "pci" / "drivers" / "nvidia"
    sim.kernel.write(drv / "unbind", str(HEALTHY))
    sim.kernel.write(fn.path / "reset", "1")
    assert fn.link.current_speed == "2.5 GT/s PCIe"  # retraining right after the reset
    sim.node.clock.sleep(1.0)
    assert fn.link.current_speed == "2.5 GT/s PCIe"  # trained, and idle: the GPU lowers its generation
    sim.kernel.load_begin(HEALTHY)
    assert fn.link.current_speed == "32.0 GT/s PCIe"  # in use: the trained speed
    sim.kernel.load_end(HEALTHY)
    assert (fn.link.current_speed, fn.link.current_width) == ("2.5 GT/s PCIe", 16)  # idle again; width stays
    sim.kernel.write(drv / "bind", str(HEALTHY))
    assert sim.node.nvml.health(HEALTHY).status == OK


def test_kernel_rejects_what_the_kernel_rejects(sim):
    fn = sim.node.sysfs.function(HEALTHY)
    with pytest.raises(OSError) as err:
        sim.kernel.write(fn.path / "reset", "2")
    assert err.value.errno == errno.EINVAL
    cursor = sim.node.kmsg.cursor()
    with pytest.raises(OSError) as err:
        sim.kernel.write(fn.path / "reset_method", "acpi")
    assert err.value.errno == errno.EINVAL
    assert sim.node.kmsg.records_since(cursor)[0].message == "pci 0000:18:00.0: Unsupported reset method 'acpi'"
    with pytest.raises(PermissionError):
        sim.kernel.write(fn.path / "vendor", "0x1234")
    sim.kernel.write(fn.path / "reset_method", "bus")
    assert fn.reset_methods == ("bus",)


def test_unbind_and_bind(sim):
    drv = sim.node.sysfs.root / "bus" / "pci" / "drivers" / "nvidia"
    sim.kernel.write(drv / "unbind", str(HEALTHY))
    assert sim.node.sysfs.function(HEALTHY).driver is None
    assert sim.node.nvml.health(HEALTHY).status == "not_found"  # NVML sees only bound GPUs
    sim.kernel.write(drv / "bind", str(HEALTHY))
    assert sim.node.sysfs.function(HEALTHY).driver == "nvidia"
    with pytest.raises(OSError) as err:
        sim.kernel.write(drv / "bind", "../../etc")
    assert err.value.errno == errno.ENODEV


def test_same_seed_same_node_behaviour(tmp_path):
    path = _scenario(tmp_path, [{"bdf": "0000:9a:00.0", "profile": "flaky-flr", "p": 0.5}])

    def outcomes(seed):
        s = open_sim_node(str(path), seed=seed)
        fn = s.node.sysfs.function(FLAKY)
        out = []
        for _ in range(30):
            try:
                s.kernel.write(fn.path / "reset", "1")
                out.append(True)
            except OSError:
                out.append(False)
        s.node.close()
        return out

    assert outcomes(7) == outcomes(7)
    assert outcomes(7) != outcomes(8)
    assert 5 < outcomes(7).count(False) < 25


def test_commands_never_reach_this_machine(sim):
    # nvidia-smi -r is answered by the simulated GPU (its reset count moves), not by a program.
    sim.node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5)  # it holds every GPU
    r = sim.node.runner.run(["nvidia-smi", "-r", "-i", "0000:18:00.0"], timeout_s=5)
    assert r.returncode == 0 and r.stdout == "GPU 00000000:18:00.0 was successfully reset.\nAll done.\n"
    assert sim.kernel.gpus[HEALTHY].resets == 1
    r = sim.node.runner.run(["reboot"], timeout_s=5)
    assert r.returncode == 127 and "simulated" in r.stderr
    assert sim.node.runner.run(["uname", "-r"], timeout_s=5).stdout.strip() == "6.8.0-48-generic"


def test_modules_and_services(sim):
    run = sim.node.runner.run
    assert run(["rmmod", "nvidia"], timeout_s=5).stderr.startswith("rmmod: ERROR: Module nvidia is in use by:")
    assert run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5).returncode == 0  # it holds nvidiactl
    for m in ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"):
        assert run(["rmmod", m], timeout_s=5).returncode == 0, m
    assert sim.node.sysfs.function(HEALTHY).driver is None
    assert sim.node.nvml.health(HEALTHY).status == "driver_not_loaded"
    assert run(["rmmod", "nvidia"], timeout_s=5).stderr == "rmmod: ERROR: Module nvidia is not currently loaded\n"
    assert run(["modprobe", "nvidia_drm"], timeout_s=5).returncode == 0  # pulls in nvidia_modeset and nvidia
    assert sim.node.sysfs.function(HEALTHY).driver == "nvidia" and sim.kernel.modules >= {"nvidia", "nvidia_modeset"}
    assert run(["systemctl", "start", "nvidia-persistenced"], timeout_s=5).returncode == 0
    r = run(["systemctl", "is-active", "nvidia-persistenced"], timeout_s=5)
    assert (r.returncode, r.stdout) == (0, "active\n")
    assert run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5).returncode == 0
    assert run(["systemctl", "is-active", "nvidia-persistenced"], timeout_s=5).returncode == 3
    assert run(["systemctl", "stop", "nope"], timeout_s=5).returncode == 5


@pytest.mark.parametrize("gpus, message", [
    ([], "no [[gpu]]"),
    ([{"bdf": "0000:9a:00.0", "profile": "melting"}], "unknown fault profile 'melting'"),
    ([{"bdf": "../../etc"}], "not a PCI address"),
    ([{"bdf": "0000:9a:00.0"}, {"bdf": "0000:9a:00.0"}], "share one PCI address"),
    ([{"bdf": "0000:9a:00.0", "profile": "flaky-flr", "p": 2.0}], "p must be within"),
])
def test_bad_scenarios_are_clear_errors(tmp_path, gpus, message):
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        scenarios.load(str(_scenario(tmp_path, gpus)))


def test_unknown_scenario_and_bad_toml(tmp_path):
    with pytest.raises(ScenarioError, match="h100-8gpu"):
        scenarios.load("no-such-scenario")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [\n")
    with pytest.raises(ScenarioError, match="invalid TOML"):
        scenarios.load(str(bad))


def test_health_overrides_and_full_nvml_read(tmp_path):
    path = _scenario(tmp_path, [{"bdf": "0000:18:00.0"}])
    path.write_text(path.read_text() + "[gpu.health]\nretired_pages_dbe = 3\nrecovery_action = 1\n")
    s = open_sim_node(str(path))
    try:
        h = s.node.nvml.health(HEALTHY)
        assert h.na == {}  # the simulated NVML answers every call gpusoak makes
        assert h.values["retired_pages_dbe"] == 3 and h.values["recovery_action"] == 1
        assert h.values["clock_events"] == ["gpu_idle"] and h.values["temperature_slowdown_c"] == 87
    finally:
        s.node.close()
    path.write_text(path.read_text().replace("recovery_action", "recovery_mood"))
    with pytest.raises(ScenarioError, match="unknown health field"):
        scenarios.load(str(path))


def test_a_global_rescan_re_adds_every_removed_device_a_bus_rescan_only_those_below_it(tmp_path):
    # drivers/pci/pci-sysfs.c: bus_rescan_store scans every bus; dev_bus_rescan_store one bus and
    # the buses below it; dev_rescan_store the bus the device itself sits on.
    s = open_sim_node(str(_scenario(tmp_path, [{"bdf": "0000:18:00.0"}, {"bdf": "0000:2a:00.0"}])))
    try:
        s.node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5)  # else a remove waits for it
        a, b = PciAddress.parse("0000:18:00.0"), PciAddress.parse("0000:2a:00.0")
        fn = s.node.sysfs.function
        root = s.node.sysfs.root
        for gpu in (a, b):
            s.kernel.write(fn(gpu).path / "remove", "1")
        s.kernel.write(root / "bus/pci/devices/0000:17:01.0/pci_bus/0000:18/rescan", "1")
        assert fn(a).present and not fn(b).present
        s.kernel.write(fn(a).path / "remove", "1")
        s.kernel.write(root / "bus/pci/devices/0000:17:01.0/rescan", "1")  # the port's own bus: 0000:17
        assert fn(a).present and not fn(b).present
        s.kernel.write(root / "bus/pci/rescan", "1")
        assert fn(a).present and fn(b).present and fn(b).driver == "nvidia"
        with pytest.raises(OSError) as err:
            s.kernel.write(root / "bus/pci/devices/0000:17:01.0/pci_bus/0000:2a/rescan", "1")
        assert err.value.errno == errno.ENOENT  # not this port's bus
    finally:
        s.node.close()


def test_a_reset_or_a_rebind_puts_the_gpu_settings_back_to_the_drivers_defaults(sim):
    gpu = PciAddress.parse("0000:18:00.0")
    smi = ["nvidia-smi", "-i", gpu.nvml_bus_id]
    query = [*smi, "--query-gpu=pci.bus_id,compute_mode,power.limit,clocks.applications.graphics,"
             "clocks.applications.memory,accounting.mode,persistence_mode", "--format=csv,noheader,nounits"]
    run = sim.node.runner.run
    # The fixture stopped nvidia-persistenced, which leaves the GPUs non-persistent as it exits.
    assert run(query, timeout_s=5).stdout == "00000000:18:00.0, Default, 700.00, 1980, 2619, Disabled, Disabled\n"
    for args in (["-c", "3"], ["-pl", "450"], ["-ac", "2619,1410"], ["-am", "1"], ["-pm", "1"]):
        assert run([*smi, *args], timeout_s=5).returncode == 0
    assert run(query, timeout_s=5).stdout == "00000000:18:00.0, Exclusive_Process, 450.00, 1410, 2619, Enabled, Enabled\n"
    assert run([*smi, "-pl", "9000"], timeout_s=5).returncode == 2  # outside the card's range
    fn = sim.node.sysfs.function(gpu)
    drivers = sim.node.sysfs.root / "bus/pci/drivers/nvidia"
    sim.kernel.write(drivers / "unbind", str(gpu))  # reset unbound, as gpusoak's flr does it
    assert run(query, timeout_s=5).returncode == 6  # no nvidia-bound GPU there
    sim.kernel.write(fn.path / "reset", "1")
    sim.kernel.write(drivers / "bind", str(gpu))
    assert run(query, timeout_s=5).stdout == "00000000:18:00.0, Default, 700.00, 1980, 2619, Disabled, Disabled\n"
    run([*smi, "-c", "2"], timeout_s=5)
    sim.kernel.write(drivers / "unbind", str(gpu))
    sim.kernel.write(drivers / "bind", str(gpu))  # a rebind alone wipes them too
    assert run(query, timeout_s=5).stdout.split(", ")[1] == "Default"
def _holders(sim, name):
    return sim.kernel.procs.holders(sim.kernel.procs.devices[name])


def test_an_active_persistenced_holds_every_gpu_until_it_is_stopped(sim_services):
    sim = sim_services
    # nvidia-persistenced keeps each GPU initialised by holding its device file open (NVIDIA's
    # persistence-daemon doc): every /dev/nvidiaN and /dev/nvidiactl, by one process of its unit.
    pid = sim.kernel.service_pids["nvidia-persistenced"]
    assert (sim.node.proc_root / str(pid) / "cgroup").read_text() == "0::/system.slice/nvidia-persistenced.service\n"
    for name in ["nvidiactl"] + [f"nvidia{m}" for m in range(8)]:
        assert _holders(sim, name) == [pid], name
    run = sim.node.runner.run
    assert run(["nvidia-smi", "-r", "-i", "0000:18:00.0"], timeout_s=5).returncode == 255  # in use
    assert run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5).returncode == 0
    assert all(_holders(sim, f"nvidia{m}") == [] for m in range(8)) and _holders(sim, "nvidiactl") == []
    assert not (sim.node.proc_root / str(pid)).exists()
    # Started again it opens the GPUs the driver drives at that time, and only those.
    sim.node.sysfs.write(sim.node.sysfs.root / "bus/pci/drivers/nvidia/unbind", "0000:18:00.0", timeout_s=5,
                         what="unbind")
    assert run(["systemctl", "start", "nvidia-persistenced"], timeout_s=5).returncode == 0
    pid = sim.kernel.service_pids["nvidia-persistenced"]
    assert _holders(sim, "nvidia0") == [] and all(_holders(sim, f"nvidia{m}") == [pid] for m in range(1, 8))


def test_dcgm_holds_the_gpus_and_fabric_services_hold_the_driver(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[services]\nnvidia-persistenced = "inactive"\nnvidia-dcgm = "active"\ndcgm-exporter = "active"\n'
                    'nvidia-fabricmanager = "active"\n[[gpu]]\nbdf = "0000:18:00.0"\n')
    s = open_sim_node(str(path))
    try:
        pids = s.kernel.service_pids
        assert _holders(s, "nvidia0") == sorted([pids["nvidia-dcgm"], pids["dcgm-exporter"]])
        assert pids["nvidia-fabricmanager"] in _holders(s, "nvidiactl")
        run = s.node.runner.run
        for m in ("nvidia_drm", "nvidia_modeset", "nvidia_uvm"):
            assert run(["rmmod", m], timeout_s=5).returncode == 0
        assert run(["rmmod", "nvidia"], timeout_s=5).stderr == "rmmod: ERROR: Module nvidia is in use\n"
    finally:
        s.node.close()
def test_kmod_answers_from_the_simulated_lib_modules(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('driver_on_disk = "575.51.02"\n[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n')
    s = open_sim_node(str(path))
    try:
        run, rel = s.node.runner.run, s.node.kernel
        assert run(["modinfo", "-k", rel, "-F", "version", "nvidia"], timeout_s=5).stdout == "575.51.02\n"
        assert (s.node.sysfs.root / "module" / "nvidia" / "version").read_text() == "570.124.06\n"
        r = run(["modinfo", "-k", rel, "-F", "version", "gdrdrv"], timeout_s=5)
        assert (r.returncode, r.stderr) == (1, "modinfo: ERROR: Module gdrdrv not found.\n")
        r = run(["modprobe", "--show-depends", "nvidia-drm"], timeout_s=5)
        assert [line.split("/")[-1] for line in r.stdout.splitlines()] == [
            "nvidia.ko.zst ", "nvidia-modeset.ko.zst ", "nvidia-drm.ko.zst "]
        assert all(line.startswith(f"insmod {s.root}/lib/modules/{rel}/") for line in r.stdout.splitlines())
        r = run(["modprobe", "-d", "/", "--show-depends", "nvidia"], timeout_s=5)
        assert (r.returncode, r.stderr) == (1, f"modprobe: FATAL: Module nvidia not found in directory /lib/modules/{rel}\n")
        # What was on disk is what loads: the reload brings the upgraded driver in.
        for m in ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"):
            assert run(["rmmod", m], timeout_s=5).returncode == 0, m
        assert not (s.node.sysfs.root / "module" / "nvidia").exists()
        assert run(["modprobe", "nvidia_uvm"], timeout_s=5).returncode == 0
        assert s.node.driver_version() == "575.51.02"
        assert [p.name for p in (s.node.sysfs.root / "module" / "nvidia" / "holders").iterdir()] == ["nvidia_uvm"]
        assert (s.node.sysfs.root / "module" / "nvidia" / "refcnt").read_text() == "1\n"
    finally:
        s.node.close()


def test_without_lib_modules_modprobe_cannot_load_back(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('lib_modules = false\n[[gpu]]\nbdf = "0000:18:00.0"\n')
    s = open_sim_node(str(path))
    try:
        run = s.node.runner.run
        assert run(["rmmod", "nvidia_drm"], timeout_s=5).returncode == 0
        r = run(["modprobe", "nvidia_drm"], timeout_s=5)
        assert (r.returncode, r.stderr) == (1, f"modprobe: FATAL: Module nvidia_drm not found in directory /lib/modules/{s.node.kernel}\n")
    finally:
        s.node.close()


def test_persistenced_makes_the_gpus_persistent_while_it_runs(sim_services):
    run = sim_services.node.runner.run
    query = ["nvidia-smi", "--query-gpu=persistence_mode", "--format=csv,noheader"]
    assert set(run(query, timeout_s=5).stdout.split()) == {"Enabled"}
    run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5)
    assert set(run(query, timeout_s=5).stdout.split()) == {"Disabled"}
    run(["systemctl", "start", "nvidia-persistenced"], timeout_s=5)
    assert set(run(query, timeout_s=5).stdout.split()) == {"Enabled"}
