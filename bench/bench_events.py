"""Benchmark: `gpusoak events` over a 1M-line mixed kernel log, against `grep -E` with the same triggers.

Run:  python bench/bench_events.py [--lines 1000000]
Prints the wall times, their ratio, and gpusoak's peak memory at two log sizes (memory must not grow
with the log). Target (issue 3): within 3x of grep, memory independent of the file's size.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpusoak.host.klog import TRIGGERS

NOISE = [
    "e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: Rx/Tx",
    "EXT4-fs (nvme0n1p2): mounted filesystem with ordered data mode. Quota mode: none.",
    "audit: type=1400 audit({t}:{n}): apparmor=\"DENIED\" operation=\"open\" profile=\"snap.x\" name=\"/proc/{n}/\"",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    "nvidia-uvm: Loaded the UVM driver, major device number 508.",
    "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  570.124.06  Release Build",
    "pcieport 0000:00:01.0: PME: Signaling with IRQ 24",
    "usb 1-1: new high-speed USB device number {n} using xhci_hcd",
    "systemd[1]: Started Session {n} of User root.",
    "kauditd_printk_skb: {n} callbacks suppressed",
]
EVENTS = [
    "NVRM: Xid (PCI:0000:{b:02x}:00): 79, pid={n}, name=python, GPU has fallen off the bus.",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 13, pid='<unknown>', name=<unknown>, Graphics Exception",
    "pcieport 0000:64:01.0: AER: Correctable error message received from 0000:{b:02x}:00.0",
    "nvidia 0000:{b:02x}:00.0: PCIe Bus Error: severity=Correctable, type=Physical Layer, (Receiver ID)",
    "nvidia 0000:{b:02x}:00.0: not ready 65535ms after FLR; giving up",
]
PREFIXES = ["[{t:>5}.{u:06d}] ", "Nov 21 21:52:59 gpu-node-7 kernel: [{t:>5}.{u:06d}] ", "[{t:>5}.{u:06d}] "]


def make_log(path: Path, lines: int, seed: int = 1, event_rate: float = 0.01) -> None:
    """A mixed log: three prefix styles, ten kinds of noise (one of them NVRM chatter), events at
    ``event_rate`` (1 % is a log from a bad night; a healthy node logs far fewer)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(lines):
            t, u, n, b = i // 100, (i * 7919) % 1_000_000, rng.randrange(1, 99999), rng.choice([0x18, 0x65, 0x9a])
            pattern = rng.choice(EVENTS) if rng.random() < event_rate else rng.choice(NOISE)
            f.write(rng.choice(PREFIXES).format(t=t, u=u) + pattern.format(t=t, n=n, b=b) + "\n")


def run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process.

    Output goes to a real file: GNU grep stops at the first match when stdout is /dev/null.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile("w") as sink:
        proc = subprocess.Popen(argv, stdout=sink)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # grep exits 1 when nothing matched
        raise SystemExit(f"{argv[0]} failed")
    return wall, usage.ru_maxrss


def best_of(n: int, argv: list[str]) -> tuple[float, int]:
    runs = [run(argv) for _ in range(n)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--event-rate", type=float, default=0.01, help="fraction of lines that are events")
    args = p.parse_args()
    # grep gets the same triggers as gpusoak: the literal ones escaped, the two confirming ones as
    # the equivalent extended regular expressions.
    literal = [re.escape(t.decode()) for t in TRIGGERS if isinstance(t, bytes)]
    pattern = "|".join(literal + [
        "NVRM: (The NVIDIA GPU|\\(PCI ID: |.*(fallen off the bus|RmInitAdapter|rm_init_adapter|Failed to (enable|allocate) MSI))",
        "AER: .*(rror|failed)"])
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.log", Path(tmp) / "small.log"
        make_log(big, args.lines, event_rate=args.event_rate)
        make_log(small, args.lines // 4, event_rate=args.event_rate)
        size_mb = big.stat().st_size / 1e6
        gpusoak = [sys.executable, "-m", "gpusoak.cli", "events", "--json"]
        g_wall, g_rss = best_of(args.repeat, gpusoak + [str(big)])
        _, g_rss_small = best_of(1, gpusoak + [str(small)])
        grep_wall, _ = best_of(args.repeat, ["grep", "-E", pattern, str(big)])
        events = subprocess.run(gpusoak + [str(big)], capture_output=True, text=True).stdout.count("\n")
    print(f"log: {args.lines} lines, {size_mb:.1f} MB, {events} events (event rate {args.event_rate})")
    print(f"gpusoak events --json: {g_wall:.3f} s wall, peak RSS {g_rss / 1024:.1f} MiB "
          f"({args.lines // 4} lines: {g_rss_small / 1024:.1f} MiB)")
    print(f"grep -E (same triggers): {grep_wall:.3f} s wall")
    print(f"ratio gpusoak / grep: {g_wall / grep_wall:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
