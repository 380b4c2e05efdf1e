"""The real-kernel tier: what a real Linux kernel did when gpusoak's real backend reset its devices.

One guest boot per kernel (Debian 12's 6.1 and the 6.12 it gets from backports; a few minutes each
under TCG); every assertion is about what the guest's kernel and drivers did. Where QEMU or the kernel package cannot be had, the tier is skipped with
the reason: it never counts as passed.
"""

import json

import pytest
import xmlschema

from gpusoak.report.result_json import schema
from tests.realkernel import tier

pytestmark = pytest.mark.realkernel


@pytest.fixture(scope="module", params=list(tier.KERNELS))
def guest(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"realkernel-{request.param}")
    try:
        code, console, seconds = tier.boot(out, request.param)
    except tier.TierUnavailable as err:
        pytest.skip(f"real-kernel tier did not run: {err}")
    assert code == 0, (out / "guest-error.txt").read_text() if (out / "guest-error.txt").exists() else console[-3000:]
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    cycles = {}
    for rec in journal[1:]:
        if rec.get("type") == "cycle":
            cycles.setdefault((rec["bdf"], rec["action"]), []).append(rec)
    return {"out": out, "seconds": seconds, "summary": json.loads((out / "guest.json").read_text()),
            "result": json.loads((out / "result.json").read_text()), "cycles": cycles}


def _dev(guest, name, i=0):
    return guest["summary"]["devices"][name][i]


def test_the_guest_sees_its_devices_with_the_kernels_reset_methods(guest):
    s = guest["summary"]
    assert set(s["devices"]) - {"igb"} == {"nvme", "virtio-net", "e1000e", "edu"} and len(s["devices"]["edu"]) == 2
    assert s["reset_methods"][_dev(guest, "nvme")] == ["flr", "bus"]
    assert s["reset_methods"][_dev(guest, "virtio-net")] == ["flr", "pm", "bus"]
    assert s["reset_methods"][_dev(guest, "e1000e")] == ["pm", "bus"]


@pytest.mark.parametrize("name", ["nvme", "virtio-net"])
@pytest.mark.parametrize("action", ["flr", "bus_reset", "rebind", "remove_rescan", "vfio_cycle"])
def test_functions_that_reset_cleanly_pass_every_cycle(guest, name, action):
    results = [r for r in guest["cycles"][(_dev(guest, name), action)] if r["cycle"] <= 3]  # not the benchmark's
    assert [r["outcome"] for r in results] == ["recovered"] * 3, [r["findings"] for r in results]
    assert all(0 < r["recovery_s"] < 15 for r in results)


@pytest.mark.parametrize("name", ["virtio-net", "e1000e"])
def test_pm_reset_recovers_functions_the_kernel_lists_pm_for(guest, name):
    results = guest["cycles"][(_dev(guest, name), "pm_reset")]
    assert [r["outcome"] for r in results] == ["recovered"] * 3, [r["findings"] for r in results]


def test_pm_reset_is_refused_where_the_kernel_lists_no_pm(guest):
    results = guest["cycles"][(_dev(guest, "nvme"), "pm_reset")]
    assert {r["outcome"] for r in results} == {"refused"}
    assert results[0]["findings"][0]["reason"] == "method_unsupported"
    assert "(flr bus)" in results[0]["findings"][0]["detail"]


def test_module_reload_unloads_and_reloads_the_named_functions_drivers(guest):
    m = guest["summary"]["module_reload"]
    assert m["steps"] == ["run rmmod nvme", "run rmmod e1000e", "run modprobe e1000e", "run modprobe nvme"]
    assert [r["outcome"] for r in m["results"]] == ["recovered"] * 6, m["results"]
    # virtio_pci also drives the 9p transports of the guest's own root: unloading it would unbind them.
    shared = [r for r in m["refused"] if r["reason"] == "driver_shared"]
    assert shared and shared[0]["detail"].startswith("unloading virtio_pci would also unbind ")


def test_a_write_past_its_deadline_is_hung_and_the_run_goes_on(guest):
    h = guest["summary"]["hang"]
    assert h["first"]["outcome"] == "hung" and "did not return within 0.05 s" in " ".join(h["first"]["findings"])
    assert h["first"]["seconds"] < 5  # the run did not wait for the kernel
    assert h["second"]["outcome"] == "skipped" and "hung in cycle 1" in " ".join(h["second"]["findings"])
    assert h["after"] == {"driver": "e1000e", "reset_methods": ["pm", "bus"], "present": True}


def test_e1000e_flr_is_refused_with_the_kernels_reason(guest):
    results = guest["cycles"][(_dev(guest, "e1000e"), "flr")]
    assert {r["outcome"] for r in results} == {"refused"}
    assert results[0]["findings"][0]["reason"] == "method_unsupported"
    assert "(pm bus)" in results[0]["findings"][0]["detail"]
    assert [r["outcome"] for r in guest["cycles"][(_dev(guest, "e1000e"), "bus_reset")]] == ["recovered"] * 3


def test_a_bus_reset_of_a_shared_bus_is_refused(guest):
    for i in (0, 1):
        results = guest["cycles"][(_dev(guest, "edu", i), "bus_reset")]
        assert {r["outcome"] for r in results} == {"refused"}, results[0]["findings"]
        assert results[0]["findings"][0]["reason"] in ("shared_reset_domain", "method_unsupported")
    other = _dev(guest, "edu", 1)
    first = guest["cycles"][(_dev(guest, "edu", 0), "bus_reset")][0]["findings"][0]
    assert first["reason"] == "shared_reset_domain" and other in first["detail"]


def test_the_same_reports_as_on_a_gpu_node(guest):
    out = guest["out"]
    import jsonschema

    jsonschema.validate(guest["result"], schema())
    from pathlib import Path

    xmlschema.XMLSchema(str(Path(tier.REPO) / "gpusoak" / "report" / "junit.xsd")).validate(str(out / "junit.xml"))
    assert guest["summary"]["restore"] == [] or all(not c.startswith("FAILED") for c in guest["summary"]["restore"])


def test_the_tier_ends_within_its_deadline(guest):
    assert guest["seconds"] < tier.GUEST_TIMEOUT_S


def test_an_injected_nonfatal_aer_is_attributed_counted_and_fails_a_cycle(guest):
    aer = guest["summary"]["aer"]
    vnet = _dev(guest, "virtio-net")
    assert '"OK id: vnet' in aer["replies"]["aer-nonfatal"]
    assert aer["after"]["nonfatal"] == aer["before"]["nonfatal"] + 1  # the device's aer_dev_nonfatal moved
    nonfatal = [e for e in aer["events"] if e["severity"] == "nonfatal"]
    assert nonfatal and all(e["pci"] == vnet for e in nonfatal)
    assert aer["fatal"]  # an uncorrectable error fails a cycle (verify.is_fatal)


def test_a_device_unplugged_mid_soak_is_a_result_not_a_crash(guest):
    unplug = guest["summary"]["unplug"]
    assert unplug["reply"] == '{"return": {}}' and unplug["present"] is False
    assert (unplug["outcome"], unplug["reason"]) in (("refused", "not_present"), ("failed", "present"))


def test_benchmark_gpusoak_flr_cycle_against_a_bare_reset_loop(guest):
    bench = guest["summary"]["bench"]
    print(f"FLR cycle {bench['gpusoak_cycle_s']:.3f} s vs bare reset {bench['bare_reset_s']:.3f} s: "
          f"ratio {bench['ratio']:.2f} (target <= 1.5)")
    assert bench["count"] == 20 and bench["bare_reset_s"] > 0
    assert bench["ratio"] < 3.0  # a regression guard; the target and the measurements are in bench/RESULTS.md


def test_gpusoak_run_on_the_real_node_writes_the_same_reports(guest):
    cli = guest["summary"]["cli"]
    out = guest["out"] / "cli"
    assert cli["exit"] == 0, (guest["out"] / "cli.log").read_text()[-3000:]
    # The guest's root is the host's, read-only: the node's inventory cannot be kept in its default
    # place, and the run says so and goes on (an immutable OS on a real node is the same).
    assert "the node's GPU inventory is not kept" in (guest["out"] / "cli.log").read_text()
    assert {"journal.jsonl", "result.json", "junit.xml", "report.html", "state.json"} <= set(cli["files"])
    result = json.loads((out / "result.json").read_text())
    assert result["run"]["backend"] == "real" and result["run"]["options"]["destructive"] is True
    by_bdf = {g["bdf"]: g for g in result["gpus"]}
    nvme, e1000e = _dev(guest, "nvme"), _dev(guest, "e1000e")
    assert by_bdf[nvme]["actions"]["flr"]["successes"] == 2 and by_bdf[nvme]["actions"]["rebind"]["successes"] == 2
    assert "not attempted: method_unsupported x2" in by_bdf[e1000e]["evidence"]
    journal = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    nvml = [c for r in journal[1:] if r.get("type") == "cycle" for c in r["checks"] if c["name"] == "nvml"]
    assert nvml and all(c["status"] == "skip" and "not an NVIDIA GPU" in c["detail"] for c in nvml)
    assert "http" not in (out / "report.html").read_text().split("<script")[0]


def test_an_injected_fatal_aer_is_attributed_fails_a_cycle_and_the_device_is_judged_after(guest):
    f = guest["summary"]["aer_fatal"]
    vnet = _dev(guest, "virtio-net")
    assert '"OK id: vnet' in f["reply"]
    fatal = [e for e in f["events"] if e["severity"] == "fatal"]
    assert fatal and all(e["pci"] == vnet for e in fatal) and f["fatal"]
    # The kernel reset the link below the port (virtio-net has no error handlers); the next cycle
    # on the device is a result with its outcome, never a crash.
    assert any("link has been reset" in line or "recovery" in line for line in f["kmsg"])
    assert f["after"]["outcome"] in ("recovered", "failed", "hung")


def test_an_injected_correctable_aer_is_attributed_counted_and_never_fails_a_cycle(guest):
    aer = guest["summary"]["aer"]
    vnet = _dev(guest, "virtio-net")
    assert '"OK id: vnet' in aer["replies"]["aer-correctable"]
    corrected = [e for e in aer["events"] if e["severity"] == "corrected"]
    assert not [e for e in corrected if e["text"] in aer["fatal"]]
    if not json.loads((guest["out"] / "qemu.json").read_text())["igb"]:
        # QEMU 7.2 (Debian 12's) sets the device's Correctable Error Status but sends no message:
        # the kernel never hears of it. Seen on 2026-11-22; backports' QEMU 10 delivers it.
        pytest.skip(f"this QEMU does not deliver correctable AER messages (device config: {aer.get('config')})")
    assert corrected and all(e["pci"] == vnet for e in corrected), aer["events"]
    assert aer["after"]["correctable"] == aer["before"]["correctable"] + 1  # aer_dev_correctable moved


def test_igb_sr_iov_virtual_functions_are_soaked_and_every_cycle_is_a_result(guest):
    qemu = json.loads((guest["out"] / "qemu.json").read_text())
    if not qemu["igb"]:
        pytest.skip("this QEMU has no igb (QEMU 8.0 and later have it) and bookworm-backports' could not be fetched")
    igb = guest["summary"]["igb"]
    assert igb and len(igb["vfs"]) == 2 and set(igb["drivers"].values()) == {"igbvf"}, igb
    assert all("flr" in m for m in igb["reset_methods"].values())
    by_action = {}
    for r in igb["results"]:
        by_action.setdefault(r["action"], []).append(r)
    assert [r["outcome"] for r in by_action["rebind"]] == ["recovered"] * 6, by_action["rebind"]
    # The VF's FLR under QEMU's igb: whatever it did is a result with its reason, never a crash.
    # (Seen on 2026-11-22 with QEMU 10.0.2: the reset write never returned; the VF was reported
    # hung and taken out of the run.)
    flr = by_action["flr"]
    assert len(flr) == 6 and all(r["outcome"] in ("recovered", "failed", "hung", "skipped") for r in flr)
    assert all(r["findings"] for r in flr if r["outcome"] != "recovered")
    print("igb VF FLR outcomes:", [r["outcome"] for r in flr], "; disabling the VFs:", igb.get("disabled"))
