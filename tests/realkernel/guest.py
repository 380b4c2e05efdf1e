"""Runs inside the QEMU guest: gpusoak's real backend soaks the emulated PCI devices.

Real /sys writes, the real /dev/kmsg, real driver binds: the same Soak, actions and verification as
on a GPU node (NVML is unavailable here, and its checks are skipped with that reason). Writes the
journal, result.json, junit.xml and a summary (guest.json) into OUT.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from gpusoak.errors import GpusoakError
from gpusoak.host.node import open_real_node
from gpusoak.report import build as report_build
from gpusoak.soak import Soak, SoakOptions

# vendor:device of the emulated functions (shared/reference/qemu-real-kernel-tier.md)
WANTED = {"nvme": (0x1B36, 0x0010), "virtio-net": (0x1AF4, 0x1041), "e1000e": (0x8086, 0x10D3), "edu": (0x1234, 0x11E8),
          "igb": (0x8086, 0x10C9)}
IGB_VF = (0x8086, 0x10CA)
ACTIONS = ("flr", "pm_reset", "bus_reset", "rebind", "remove_rescan", "vfio_cycle")
CYCLES = 3


def main(out: Path) -> int:
    summary: dict = {"started": time.time()}
    node = open_real_node()
    found: dict[str, list[str]] = {}
    for bdf in node.sysfs.pci_devices():
        fn = node.sysfs.function(bdf)
        for name, ids in WANTED.items():
            if (fn.vendor, fn.device_id) == ids:
                found.setdefault(name, []).append(str(bdf))
    summary["devices"] = found
    summary["reset_methods"] = {b: list(node.sysfs.function(_p(b)).reset_methods or ()) for bs in found.values() for b in bs}
    summary["drivers"] = {b: node.sysfs.function(_p(b)).driver for bs in found.values() for b in bs}
    nvme2 = found.get("nvme", [None, None])[1]
    devices = [_p(b) for name in ("nvme", "virtio-net", "e1000e", "edu") for b in found.get(name, [])[:2]
               if b != nvme2]
    options = SoakOptions(cycles=CYCLES, actions=ACTIONS, destructive=True, ladder=False, settle_s=1.0, recovery_deadline_s=15.0,
                          write_timeout_s=30.0, load_seconds=0.0)
    soak = Soak(node, "realkernel", options, devices)
    soak.start(out / "journal.jsonl", out / "state.json")
    t = time.monotonic()
    for action in ACTIONS:
        for cycle in range(1, CYCLES + 1):
            for bdf in devices:
                soak.run_cycle(bdf, action, cycle)
    summary["soak_s"] = time.monotonic() - t
    summary["kernel"] = node.kernel
    summary["module_reload"] = _module_reload(node, out, [_p(b) for b in found["nvme"][:2]] + [_p(found["e1000e"][0])],
                                              _p(found["virtio-net"][0]))
    summary["hang"] = _hang(node, out, _p(found["e1000e"][0]))
    summary["aer"] = _aer(node, out, found["virtio-net"][0])
    summary["unplug"] = _unplug(node, out, soak, nvme2) if nvme2 else None
    summary["bench"] = _bench(node, soak, _p(found["nvme"][0]))
    summary["restore"] = soak.finish()
    soak.journal.close()
    report_build.rebuild(out / "journal.jsonl", out)
    summary["cli"] = _cli(out, [found["nvme"][0], found["virtio-net"][0], found["e1000e"][0]])
    summary["aer_fatal"] = _aer_fatal(node, out, _p(found["virtio-net"][0]))  # the port's link is reset
    # Last of all: a VF reset that never returns leaves its PF's lock held.
    summary["igb"] = _sriov(node, out, _p(found["igb"][0])) if found.get("igb") else None
    summary["finished"] = time.time()
    (out / "kmsg.txt").write_text("\n".join(f"[{r.usec / 1e6:12.6f}] {r.message}" for r in node.kmsg.records_since(-1)))
    (out / "guest.json").write_text(json.dumps(summary, indent=2))
    return 0


def _cli(out: Path, devices: list[str]) -> dict:
    """The real entry point, as an operator runs it: gpusoak run on the real node, destructive,
    for non-NVIDIA functions named by address."""
    import subprocess

    report = out / "cli"
    argv = [sys.executable, "-m", "gpusoak.cli", "run", "--backend", "real", "--destructive", "--devices",
            ",".join(devices), "--actions", "flr,rebind", "--cycles", "2", "--report-dir", str(report),
            "--lock-file", str(out / "gpusoak.lock"), "--load-seconds", "0", "--post-check-seconds", "0", "-q"]
    t = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    (out / "cli.log").write_text(done.stdout + done.stderr)
    return {"exit": done.returncode, "seconds": time.monotonic() - t,
            "files": sorted(p.name for p in report.iterdir()) if report.is_dir() else []}


def _ask(out: Path, name: str, timeout_s: float = 60.0) -> str:
    (out / f"request-{name}").write_text("")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (out / f"done-{name}").exists():
            time.sleep(0.2)
            return (out / f"done-{name}").read_text()
        time.sleep(0.2)
    return "timeout"


def _aer(node, out: Path, bdf: str) -> dict:
    """Ask the host to inject AER errors on virtio-net; report what the kernel log and counters say."""
    from gpusoak import verify

    fn = node.sysfs.function(_p(bdf))
    before = {k: (c.total if (c := fn.aer(k)) else None) for k in ("correctable", "nonfatal")}
    cursor = node.kmsg.cursor()
    replies = {name: _ask(out, name) for name in ("aer-correctable", "aer-nonfatal")}
    time.sleep(4.0)  # the AER interrupt and its log lines (TCG is slow)
    events = verify.device_events(node, _p(bdf), cursor)
    after = {k: (c.total if (c := fn.aer(k)) else None) for k in ("correctable", "nonfatal")}
    return {"replies": replies, "before": before, "after": after, "config": _error_reporting(fn.path / "config"),
            "events": [{"kind": e.kind, "severity": e.severity, "pci": e.pci, "text": e.text} for e in events],
            "fatal": [e.text for e in events if verify.is_fatal(e)]}


def _module_reload(node, out: Path, devices: list, held) -> dict:
    """module_reload of the named functions' drivers (both nvme, e1000e) with the real rmmod and
    modprobe; and the refusal for virtio-net alone, whose virtio_pci module also drives the 9p
    transports that carry the guest's root."""
    from gpusoak.actions import ACTIONS

    options = SoakOptions(cycles=2, actions=("module_reload",), destructive=True, ladder=False,
                          settle_s=1.0, recovery_deadline_s=20.0, write_timeout_s=30.0, load_seconds=0.0)
    soak = Soak(node, "realkernel-modules", options, devices)
    soak.start(out / "modules.jsonl", out / "modules-state.json")
    results = [r for c in (1, 2) for r in soak.run_node_cycle("module_reload", c)]
    soak.finish()
    soak.journal.close()
    refused = ACTIONS["module_reload"].refusals(node, None, options.context_for([held]))
    return {"results": [{"bdf": r.bdf, "outcome": r.outcome, "findings": [f.reason + ": " + f.detail for f in r.findings],
                         "driver": next((c.detail for c in r.checks if c.name == "driver"), None)} for r in results],
            "steps": [str(x) for x in ACTIONS["module_reload"].steps(node, None, options.context_for(devices))],
            "refused": [{"reason": f.reason, "detail": f.detail} for f in refused]}


def _sriov(node, out: Path, pf) -> dict:
    """igb with SR-IOV: enable two virtual functions, soak each with rebind and flr (named as
    --devices would name them), then disable them again. Every cycle must be a result; what the
    VF's FLR did is recorded as the kernel and QEMU did it."""
    fn = node.sysfs.function(pf)
    node.sysfs.write(fn.path / "sriov_numvfs", "2", timeout_s=60, what="enabling 2 VFs")
    deadline = time.monotonic() + 30
    vfs: list = []
    while time.monotonic() < deadline:
        vfs = [b for b in node.sysfs.pci_devices()
               if (node.sysfs.function(b).vendor, node.sysfs.function(b).device_id) == IGB_VF]
        if len(vfs) == 2 and all(node.sysfs.function(b).driver for b in vfs):
            break
        time.sleep(0.5)
    out_vfs = {"pf": str(pf), "vfs": [str(b) for b in vfs],
               "drivers": {str(b): node.sysfs.function(b).driver for b in vfs},
               "reset_methods": {str(b): list(node.sysfs.function(b).reset_methods or ()) for b in vfs}}
    if vfs:
        options = SoakOptions(cycles=3, actions=("rebind", "flr"), destructive=True, ladder=False,
                              settle_s=1.0, recovery_deadline_s=15.0, write_timeout_s=10.0, load_seconds=0.0)
        soak = Soak(node, "realkernel-sriov", options, vfs)
        soak.start(out / "sriov.jsonl", None)
        # rebind first: a VF whose FLR hangs is taken out of the run, and rebind would never run.
        results = [soak.run_cycle(b, a, c) for a in ("rebind", "flr") for c in (1, 2, 3) for b in vfs]
        soak.journal.close()
        out_vfs["results"] = [{"bdf": r.bdf, "action": r.action, "outcome": r.outcome,
                               "findings": [f.reason + ": " + f.detail for f in r.findings]} for r in results]
    try:
        node.sysfs.write(fn.path / "sriov_numvfs", "0", timeout_s=10, what="disabling the VFs")
        out_vfs["disabled"] = "ok"
    except GpusoakError as err:  # a hung VF reset holds the device lock: say so and go on
        out_vfs["disabled"] = f"{type(err).__name__}: {err}"
    time.sleep(1.0)
    out_vfs["after"] = [str(b) for b in node.sysfs.pci_devices()
                        if (node.sysfs.function(b).vendor, node.sysfs.function(b).device_id) == IGB_VF]
    return out_vfs


def _hang(node, out: Path, bdf) -> dict:
    """A write that does not return within its deadline: a bus reset (the kernel waits about a
    second after it) under a 50 ms write deadline. The cycle is hung, the device is taken out of
    the run, and the run goes on."""
    options = SoakOptions(cycles=2, actions=("bus_reset",), destructive=True, ladder=False,
                          settle_s=1.0, recovery_deadline_s=15.0, write_timeout_s=0.05, load_seconds=0.0)
    soak = Soak(node, "realkernel-hang", options, [bdf])
    soak.start(out / "hang.jsonl", None)
    t = time.monotonic()
    first = soak.run_cycle(bdf, "bus_reset", 1)
    took = time.monotonic() - t
    second = soak.run_cycle(bdf, "bus_reset", 2)
    soak.journal.close()
    time.sleep(3.0)  # the reset itself finishes in the kernel
    fn = node.sysfs.function(bdf)
    if fn.reset_methods != ("pm", "bus"):  # the restore may itself have met the 50 ms deadline
        node.sysfs.write(fn.path / "reset_method", "pm bus", timeout_s=30, what="restoring reset_method")
    return {"first": {"outcome": first.outcome, "findings": [f.reason + ": " + f.detail for f in first.findings],
                      "seconds": took},
            "second": {"outcome": second.outcome, "findings": [f.reason + ": " + f.detail for f in second.findings]},
            "after": {"driver": fn.driver, "reset_methods": list(fn.reset_methods or ()), "present": fn.present}}


def _error_reporting(config: Path) -> dict:
    """What the device's config space says about error reporting: Device Control's enable bits
    (PCI Express capability + 8) and the AER correctable mask (AER capability + 0x14). To tell
    why an injected error was or was not reported."""
    data = config.read_bytes()
    out: dict = {}
    pos = data[0x34] if len(data) > 0x34 else 0
    while pos and pos + 10 <= len(data):
        if data[pos] == 0x10:
            devctl = int.from_bytes(data[pos + 8:pos + 10], "little")
            out["devctl"] = hex(devctl)
            out["cere"], out["nfere"], out["fere"] = bool(devctl & 1), bool(devctl & 2), bool(devctl & 4)
        pos = data[pos + 1]
    ext = 0x100
    while ext and ext + 0x18 <= len(data):
        header = int.from_bytes(data[ext:ext + 4], "little")
        if header & 0xFFFF == 0x0001:
            out["aer_cor_mask"] = hex(int.from_bytes(data[ext + 0x14:ext + 0x18], "little"))
            out["aer_cor_status"] = hex(int.from_bytes(data[ext + 0x10:ext + 0x14], "little"))
        ext = header >> 20
    return out


def _aer_fatal(node, out: Path, bdf) -> dict:
    """A fatal AER error on virtio-net: the kernel resets the link below the port; the event is
    attributed, it fails a cycle, and a cycle on the device afterwards is a result."""
    from gpusoak import verify

    cursor = node.kmsg.cursor()
    reply = _ask(out, "aer-fatal")
    time.sleep(6.0)  # the AER interrupt, the link reset and the driver's recovery (TCG is slow)
    events = verify.device_events(node, bdf, cursor)
    options = SoakOptions(cycles=1, actions=("flr",), destructive=True, ladder=False,
                          settle_s=1.0, recovery_deadline_s=15.0, write_timeout_s=30.0, load_seconds=0.0)
    soak = Soak(node, "realkernel-after-fatal", options, [bdf])
    soak.start(out / "after-fatal.jsonl", None)
    after = soak.run_cycle(bdf, "flr", 1)
    soak.journal.close()
    kmsg = [r.message for r in node.kmsg.records_since(cursor)]
    return {"reply": reply,
            "events": [{"kind": e.kind, "severity": e.severity, "pci": e.pci, "text": e.text} for e in events],
            "fatal": [e.text for e in events if verify.is_fatal(e)],
            "after": {"outcome": after.outcome, "findings": [f.reason + ": " + f.detail for f in after.findings]},
            "kmsg": kmsg[-40:]}


def _unplug(node, out: Path, soak, bdf: str) -> dict:
    """The host hot-unplugs nvme2; a cycle on it must be a result with a reason, never a crash."""
    reply = _ask(out, "unplug")
    deadline = time.monotonic() + 20
    while node.sysfs.function(_p(bdf)).present and time.monotonic() < deadline:
        time.sleep(0.5)  # the attention button takes about 5 s
    soak.baselines.setdefault(_p(bdf), soak.baselines[next(iter(soak.baselines))])
    r = soak.run_cycle(_p(bdf), "flr", 1)
    return {"reply": reply, "present": node.sysfs.function(_p(bdf)).present, "outcome": r.outcome,
            "reason": r.reason}


def _bench(node, soak, bdf, count: int = 20) -> dict:
    """gpusoak's FLR cycle (verification included) against a bare shell loop of writes to reset.
    Without the settle window: it is waiting by design (--settle, seconds per cycle), not overhead."""
    import dataclasses
    import subprocess

    kept = soak.options
    soak.options = dataclasses.replace(kept, settle_s=0.0)
    t = time.monotonic()
    try:
        for c in range(count):
            soak.run_cycle(bdf, "flr", 100 + c)
    finally:
        soak.options = kept
    gpusoak_s = (time.monotonic() - t) / count
    path = node.sysfs.function(bdf).path / "reset"
    t = time.monotonic()
    subprocess.run(["sh", "-c", f"for i in $(seq {count}); do echo 1 > {path}; done"], check=True)
    bare_s = (time.monotonic() - t) / count
    return {"count": count, "gpusoak_cycle_s": gpusoak_s, "bare_reset_s": bare_s, "ratio": gpusoak_s / bare_s}


def _p(text: str):
    from gpusoak.model import PciAddress

    return PciAddress.parse(text)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    try:
        code = main(out)
    except Exception:
        (out / "guest-error.txt").write_text(traceback.format_exc())
        traceback.print_exc()
        code = 1
    # Said before exiting: a thread still blocked in the kernel can keep this process from
    # exiting at all, and the host then stops the VM (tier.FINISHED_GRACE_S).
    (out / "exit-code").write_text(f"{code}\n")
    os.sync()
    sys.exit(code)
