"""Runs inside the QEMU guest: gpusoak's real backend soaks the emulated PCI devices.

Real /sys writes, the real /dev/kmsg, real driver binds: the same Soak, actions and verification as
on a GPU node (NVML is unavailable here, and its checks are skipped with that reason). Writes the
journal, result.json, junit.xml and a summary (guest.json) into OUT.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from gpusoak.host.node import open_real_node
from gpusoak.report import build as report_build
from gpusoak.soak import Soak, SoakOptions

# vendor:device of the emulated functions (shared/reference/qemu-real-kernel-tier.md)
WANTED = {"nvme": (0x1B36, 0x0010), "virtio-net": (0x1AF4, 0x1041), "e1000e": (0x8086, 0x10D3), "edu": (0x1234, 0x11E8)}
ACTIONS = ("flr", "bus_reset", "rebind", "remove_rescan", "vfio_cycle")
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
    options = SoakOptions(cycles=CYCLES, actions=ACTIONS, destructive=True, ladder=False, recovery_deadline_s=15.0,
                          write_timeout_s=30.0, load_seconds=0.0)
    soak = Soak(node, "realkernel", options, devices)
    soak.start(out / "journal.jsonl", out / "state.json")
    t = time.monotonic()
    for action in ACTIONS:
        for cycle in range(1, CYCLES + 1):
            for bdf in devices:
                soak.run_cycle(bdf, action, cycle)
    summary["soak_s"] = time.monotonic() - t
    summary["aer"] = _aer(node, out, found["virtio-net"][0])
    summary["unplug"] = _unplug(node, out, soak, nvme2) if nvme2 else None
    summary["bench"] = _bench(node, soak, _p(found["nvme"][0]))
    summary["restore"] = soak.finish()
    soak.journal.close()
    report_build.rebuild(out / "journal.jsonl", out)
    summary["cli"] = _cli(out, [found["nvme"][0], found["virtio-net"][0], found["e1000e"][0]])
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
    return {"replies": replies, "before": before, "after": after,
            "events": [{"kind": e.kind, "severity": e.severity, "pci": e.pci, "text": e.text} for e in events],
            "fatal": [e.text for e in events if verify.is_fatal(e)]}


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
    """gpusoak's FLR cycle (verification included) against a bare shell loop of writes to reset."""
    import subprocess

    t = time.monotonic()
    for c in range(count):
        soak.run_cycle(bdf, "flr", 100 + c)
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
        sys.exit(main(out))
    except Exception:
        (out / "guest-error.txt").write_text(traceback.format_exc())
        traceback.print_exc()
        sys.exit(1)
