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
    devices = [_p(b) for name in ("nvme", "virtio-net", "e1000e", "edu") for b in found.get(name, [])]
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
    summary["restore"] = soak.finish()
    soak.journal.close()
    report_build.rebuild(out / "journal.jsonl", out)
    summary["finished"] = time.time()
    (out / "guest.json").write_text(json.dumps(summary, indent=2))
    return 0


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
