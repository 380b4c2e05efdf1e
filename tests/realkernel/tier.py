"""The real-kernel tier: gpusoak's real backend, inside a QEMU guest, resets emulated PCIe devices.

Host side: fetch a Debian kernel (apt-get download, dpkg -x, depmod) into a cache, build a busybox
initramfs with the modules the guest needs, boot QEMU (TCG; q35 with an emulated IOMMU; each device
behind its own root port, plus two devices sharing a PCI bridge), share this machine's root
read-only and a results folder read-write over 9p, and run tests/realkernel/guest.py in the guest
with this checkout's Python. See shared/reference/qemu-real-kernel-tier.md.

    python -m tests.realkernel.tier OUT_DIR [SUITE]  # builds (cached) and runs; exit 0 when the guest finished
"""

from __future__ import annotations

import contextlib
import gzip
import json
import lzma
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".ci" / "cache" / "realkernel"
KERNEL_PACKAGE = "linux-image-amd64"  # a suite's current kernel, through its meta package
# Two kernels: Debian 12's own (6.1) and the newer one Debian backports to it (6.12 on 2026-11-22),
# the latter through apt lists of its own under the cache: the machine's apt sources stay as they are.
KERNELS = {
    "bookworm": None,
    "bookworm-backports": "deb http://deb.debian.org/debian bookworm-backports main",
}
MODULES = ("9pnet_virtio", "9p", "overlay", "nvme", "virtio_net", "e1000e", "vfio-pci", "virtio_pci", "igb", "igbvf")
# igb (with SR-IOV) arrived in QEMU 8.0; Debian 12 has 7.2, and bookworm-backports has a newer one.
# It is fetched like the kernels and run from the cache; without it the tier runs without igb.
QEMU_PACKAGES = ("qemu-system-x86", "qemu-system-data", "qemu-system-common")
GUEST_TIMEOUT_S = 900


class TierUnavailable(RuntimeError):
    """The tier could not be built here (no QEMU, no registry): it did not run, and says why."""


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def tools() -> dict[str, str]:
    found = {t: shutil.which(t) for t in ("qemu-system-x86_64", "busybox", "depmod", "modprobe", "apt-get", "dpkg")}
    missing = [t for t, p in found.items() if p is None]
    if missing:
        raise TierUnavailable(f"missing tools: {', '.join(missing)} (apt-get install qemu-system-x86 "
                              "busybox-static kmod)")
    return found  # type: ignore[return-value]


def _apt(suite: str) -> list[str]:
    """apt options for a suite: none for the machine's own, private lists for the others."""
    source = KERNELS[suite]
    if source is None:
        return []
    base = CACHE / f"apt-{suite}"
    for d in (base / "lists" / "partial", base / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    (base / "sources.list").write_text(source + "\n")
    return ["-o", f"Dir::Etc::sourcelist={base / 'sources.list'}", "-o", "Dir::Etc::sourceparts=/dev/null",
            "-o", f"Dir::State::Lists={base / 'lists'}", "-o", f"Dir::Cache={base / 'cache'}"]


def kernel(suite: str = "bookworm") -> tuple[Path, Path, str]:
    """(vmlinuz, modules root, release) of a suite's current kernel, downloaded once into the cache.

    Offline, the kernel this suite resolved to last time is used if it is in the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    apt = _apt(suite)
    dep = _run(["apt-cache", *apt, "depends", KERNEL_PACKAGE])
    if "Depends:" not in dep.stdout and (os.geteuid() == 0 or apt):
        _run(["apt-get", *apt, "update", "-qq"])  # a fresh machine (or private list) has no package lists yet
        dep = _run(["apt-cache", *apt, "depends", KERNEL_PACKAGE])
    versioned = next((ln.split(":", 1)[1].strip() for ln in dep.stdout.splitlines() if "Depends:" in ln), None)
    last = CACHE / f"{suite}.release"
    if not versioned and last.exists():
        versioned = "linux-image-" + last.read_text().strip()
    if not versioned:
        raise TierUnavailable(f"cannot resolve {KERNEL_PACKAGE} in {suite}: "
                              f"{dep.stderr.strip() or 'no apt lists (apt-get update)'}")
    release = versioned.removeprefix("linux-image-")
    root = CACHE / release
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.exists():
        debs = CACHE / "debs"
        debs.mkdir(exist_ok=True)
        got = _run(["apt-get", *apt, "download", "-qq", versioned], cwd=debs)
        deb = next(debs.glob(f"{versioned}_*.deb"), None)
        if deb is None:
            raise TierUnavailable(f"apt-get download {versioned} failed: {got.stderr.strip()[-300:]}")
        shutil.rmtree(root, ignore_errors=True)
        _run(["dpkg", "-x", str(deb), str(root)])
        _run(["depmod", "-b", str(root), release])
    last.write_text(release + "\n")
    return vmlinuz, root, release


@dataclass(frozen=True)
class Qemu:
    binary: str
    env: dict[str, str]
    args: tuple[str, ...]  # -L DATADIR for a cached build
    igb: bool


def qemu() -> Qemu:
    """QEMU with igb from bookworm-backports (cached), else the machine's own (without igb)."""
    system = Qemu("qemu-system-x86_64", {}, (), False)
    root = CACHE / "qemu-backports"
    binary = root / "usr" / "bin" / "qemu-system-x86_64"
    if not binary.exists():
        apt = _apt("bookworm-backports")
        if not any((CACHE / "apt-bookworm-backports" / "lists").glob("*Packages*")):
            _run(["apt-get", *apt, "update", "-qq"])
        debs = CACHE / "debs-qemu"
        debs.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", *apt, "download", "-qq", *QEMU_PACKAGES], cwd=debs)
        got = sorted(debs.glob("*.deb"))
        if len(got) < len(QEMU_PACKAGES):
            return system
        shutil.rmtree(root, ignore_errors=True)
        for deb in got:
            _run(["dpkg", "-x", str(deb), str(root)])
    env = {"QEMU_MODULE_DIR": str(root / "usr" / "lib" / "x86_64-linux-gnu" / "qemu")}
    candidate = Qemu(str(binary), env, ("-L", str(root / "usr" / "share" / "qemu")), True)
    probe = subprocess.run([candidate.binary, *candidate.args, "-machine", "q35,accel=tcg", "-display", "none",
                            "-monitor", "none", "-serial", "none", "-device", "igb,netdev=n", "-netdev", "hubport,id=n,hubid=0",
                            "-S", "-daemonize", "-pidfile", str(CACHE / "qemu-probe.pid")],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    pid = (CACHE / "qemu-probe.pid").read_text().strip() if (CACHE / "qemu-probe.pid").exists() else ""
    if pid.isdigit():
        with contextlib.suppress(OSError):
            os.kill(int(pid), 15)
    (CACHE / "qemu-probe.pid").unlink(missing_ok=True)
    return candidate if probe.returncode == 0 else system


def _module_files(root: Path, release: str) -> list[Path]:
    out: list[Path] = []
    for m in MODULES:
        shown = _run(["modprobe", "-d", str(root), "-S", release, "--show-depends", m])
        for line in shown.stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod" and Path(parts[1]) not in out:
                out.append(Path(parts[1]))
    return out


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /mods/$m 2>/dev/null; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || { echo GUEST-ERROR no 9p root; poweroff -f; }
# The results share goes over its own (existing) path; nothing else of the host tree is covered,
# so a checkout anywhere, /tmp included, stays visible.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /host@OUT@ || { echo GUEST-ERROR no 9p out; poweroff -f; }
mount -o bind /proc /host/proc; mount -o bind /sys /host/sys; mount -o bind /dev /host/dev
echo GUEST-START
chroot /host /usr/bin/env MODPROBE_OPTIONS="-d @MODROOT@" PYTHONDONTWRITEBYTECODE=1 HOME=@OUT@/tmp TMPDIR=@OUT@/tmp PYTHONPATH=@REPO@ @PYTHON@ @REPO@/tests/realkernel/guest.py @OUT@ > /dev/console 2>&1
echo GUEST-EXIT $?
sync
poweroff -f
"""


def initramfs(root: Path, release: str, workdir: Path, out_dir: Path) -> Path:
    files = _module_files(root, release)
    if not files:
        raise TierUnavailable("no kernel modules found for the guest")
    # kmod's modprobe in the guest (the host's, through the 9p root) finds the guest kernel's
    # modules under the cache: MODPROBE_OPTIONS passes -d to every modprobe gpusoak runs.
    init = (INIT.replace("@REPO@", str(REPO)).replace("@PYTHON@", sys.executable).replace("@OUT@", str(out_dir))
            .replace("@MODROOT@", str(root)))
    # newc cpio, written here: no cpio tool needed.
    entries = [("init", init.encode(), 0o100755), ("bin/busybox", Path(shutil.which("busybox")).read_bytes(), 0o100755),
               ("modules.order", "\n".join(_plain(f.name) for f in files).encode() + b"\n", 0o100644)]
    # busybox insmod takes plain modules; newer Debian kernels ship them xz-compressed.
    entries += [(f"mods/{_plain(f.name)}", lzma.decompress(f.read_bytes()) if f.name.endswith(".xz") else f.read_bytes(),
                 0o100644) for f in files]
    dirs = ["bin", "mods", "proc", "sys", "dev", "host"]
    out = workdir / "initrd.cpio.gz"
    with gzip.open(out, "wb", compresslevel=1) as gz:
        ino = 1
        for d in dirs:
            gz.write(_cpio(d, b"", 0o040755, ino))
            ino += 1
        for name, data, mode in entries:
            gz.write(_cpio(name, data, mode, ino))
            ino += 1
        gz.write(_cpio("TRAILER!!!", b"", 0, 0))
    return out


def _plain(name: str) -> str:
    return name.removesuffix(".xz")


def _cpio(name: str, data: bytes, mode: int, ino: int) -> bytes:
    nameb = name.encode() + b"\0"
    header = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0))
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    return pad(header.encode() + nameb) + pad(data)


DEVICES = [
    # Each behind its own root port: its own reset domain.
    "-device", "pcie-root-port,id=rp1,chassis=1,slot=1", "-device", "nvme,serial=gpusoak1,bus=rp1",
    "-device", "pcie-root-port,id=rp2,chassis=2,slot=2",
    "-device", "virtio-net-pci,id=vnet,disable-legacy=on,aer=on,bus=rp2,netdev=n0", "-netdev", "hubport,id=n0,hubid=0",
    # A second nvme the host hot-unplugs mid-soak.
    "-device", "pcie-root-port,id=rp5,chassis=5,slot=5", "-device", "nvme,id=nvme2,serial=gpusoak2,bus=rp5",
    "-device", "pcie-root-port,id=rp3,chassis=3,slot=3", "-device", "e1000e,bus=rp3,netdev=n1",
    "-netdev", "hubport,id=n1,hubid=1",
    # Two functions behind one bridge: a shared reset domain.
    "-device", "pcie-root-port,id=rp4,chassis=4,slot=4", "-device", "pcie-pci-bridge,id=br1,bus=rp4",
    "-device", "edu,bus=br1,addr=1", "-device", "edu,bus=br1,addr=2",
]


# An igb NIC behind its own root port; the guest enables two SR-IOV virtual functions on it.
IGB = ["-device", "pcie-root-port,id=rp6,chassis=6,slot=6", "-device", "igb,id=igb0,bus=rp6,netdev=n6",
       "-netdev", "hubport,id=n6,hubid=6"]


def boot(out_dir: Path, suite: str = "bookworm") -> tuple[int, str, float]:
    """Build what is missing, boot the guest on the suite's kernel, wait for it; returns (exit of
    the guest script, console, seconds)."""
    tools()
    vmlinuz, root, release = kernel(suite)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"work-{suite}"
    work.mkdir(parents=True, exist_ok=True)
    (out_dir / "tmp").mkdir(exist_ok=True)
    initrd = initramfs(root, release, work, out_dir)
    emu = qemu()
    devices = DEVICES + (IGB if emu.igb else [])
    argv = [emu.binary, *emu.args, "-machine", "q35,accel=tcg,kernel-irqchip=split", "-cpu", "max", "-smp", "2",
            "-m", "1536", "-nographic", "-no-reboot", "-device", "intel-iommu,intremap=on",
            "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 softlockup_panic=1 intel_iommu=on pcie_ports=native loglevel=6",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out_dir},mount_tag=out,security_model=none", *devices]
    qmp = work / "qmp.sock"
    qmp.unlink(missing_ok=True)
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    start = time.monotonic()
    (out_dir / "qemu.json").write_text(json.dumps({"binary": emu.binary, "igb": emu.igb}))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, **emu.env})
    faults = threading.Thread(target=_serve_faults, args=(out_dir, qmp, proc), daemon=True)
    faults.start()
    try:
        console, _ = proc.communicate(timeout=GUEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        console, _ = proc.communicate()
        console += f"\nHOST: the guest did not finish within {GUEST_TIMEOUT_S} s and was stopped"
    seconds = time.monotonic() - start
    (out_dir / "console.log").write_text(console)
    code = next((int(ln.split()[1]) for ln in console.splitlines() if ln.startswith("GUEST-EXIT ")), -1)
    if code == -1 and (out_dir / "exit-code").exists():  # stopped by the host after the script finished
        code = int((out_dir / "exit-code").read_text().strip() or -1)
        console += "\nHOST: the guest script finished but the VM did not power off; stopped by the host"
    return code, console, seconds


# Faults the guest asks for: it writes request-NAME into the shared folder, the host does it over
# QMP and answers with done-NAME (its text: QEMU's reply).
FAULTS = {
    "aer-correctable": "pcie_aer_inject_error -c vnet 0x1",  # Receiver Error, as a numeric status
    "aer-nonfatal": "pcie_aer_inject_error vnet 0x4000",  # Completion Timeout (bit 14): non-fatal by default severity
    "aer-fatal": "pcie_aer_inject_error vnet 0x40000",  # Malformed TLP (bit 18): fatal by default severity
    "unplug": None,  # device_del of nvme2: the attention button, about 5 s
}


FINISHED_GRACE_S = 20.0  # after the guest script says it finished, the VM gets this long to power off


def _serve_faults(out_dir: Path, qmp: Path, proc: subprocess.Popen) -> None:
    done: set[str] = set()
    finished_at = None
    while proc.poll() is None:
        # A guest thread stuck in the kernel (a reset that never returns) keeps the guest's
        # process from exiting, and so the VM from powering off: once the script has written its
        # exit code, the host stops the VM after a grace period.
        if finished_at is None and (out_dir / "exit-code").exists():
            finished_at = time.monotonic()
        if finished_at is not None and time.monotonic() - finished_at > FINISHED_GRACE_S:
            proc.kill()
            return
        for name, hmp in FAULTS.items():
            if name in done or not (out_dir / f"request-{name}").exists():
                continue
            try:
                reply = _qmp(qmp, {"execute": "device_del", "arguments": {"id": "nvme2"}} if hmp is None else
                             {"execute": "human-monitor-command", "arguments": {"command-line": hmp}})
            except OSError as err:
                reply = f"error: {err}"
            (out_dir / f"done-{name}").write_text(reply)
            done.add(name)
        time.sleep(0.2)


def _qmp(path: Path, command: dict) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        f = sock.makefile("rw")
        f.readline()  # greeting
        for cmd in ({"execute": "qmp_capabilities"}, command):
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    return "error: QMP closed"
                if '"return"' in line or '"error"' in line:
                    break
        return line.strip()


if __name__ == "__main__":
    try:
        code, console, seconds = boot(Path(sys.argv[1]).resolve(), sys.argv[2] if len(sys.argv) > 2 else "bookworm")
    except TierUnavailable as err:
        print(f"real-kernel tier did not run: {err}")
        sys.exit(3)
    print(console[-4000:])
    print(f"guest exit {code} after {seconds:.1f} s")
    sys.exit(0 if code == 0 else 1)
