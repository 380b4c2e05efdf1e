"""The simulated node's command runner: answers like the real programs, never runs anything.

Covered: ``nvidia-smi -r -i BDF``, ``nvidia-smi mig`` and ``-L`` (sim.mig) (exit codes from the nvidia-smi documentation, reference 4.1),
``nvidia-smi --query-gpu=...`` for the settings a reset wipes and ``-c/-pl/-ac/-am/-pm`` to set them,
``rmmod``, ``modprobe``, ``modprobe --show-depends`` and ``modinfo`` (kmod's wording), ``systemctl is-active|stop|start``, ``uname -r``.
A command the simulated node does not know answers as a shell does for a missing program (127),
so nothing a test asks for can reach this machine's own devices.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpusoak.host import nvml_child
from gpusoak.host.commands import CommandResult
from gpusoak.load import protocol
from gpusoak.model import PciAddress
from gpusoak.sim import driver_reset, fabric, modules
from gpusoak.sim import mig as sim_mig
from gpusoak.sim import services as sim_services
from gpusoak.sim.driver_reset import PRE_AMPERE
from gpusoak.sim.kernel import KERN_INFO, GpuState, SimKernel
from gpusoak.sim.nvml import SimNvmlLib, nvlink_peers
from gpusoak.sim.procs import (
    ANY_MINOR,
    CAPS_MAJOR,
    NVIDIA_MAJOR,
    UVM_MAJOR,
    DeviceNumber,
)
from gpusoak.sim.scenario import SETTINGS_DEFAULTS
from gpusoak.sim.tree import load_module, module_holders, unload_module


def _options(args: tuple[str, ...], with_value: set[str]) -> tuple[dict[str, str], list[str]]:
    """getopt's short options that take a value (``-k REL`` or ``-kREL``), and the operands."""
    opts: dict[str, str] = {}
    names: list[str] = []
    it = iter(args)
    for a in it:
        if a[:2] in with_value:
            opts[a[:2]] = a[2:] or next(it, "")
        else:
            names.append(a)
    return opts, names


def _same_bus_id(target: str, bdf: PciAddress) -> bool:
    try:
        return PciAddress.parse(target.lower()) == bdf
    except Exception:
        return False


def _not_available(text: str) -> bool:
    return text.startswith("[")


_MODES = {"0": "Default", "DEFAULT": "Default", "1": "Exclusive_Thread", "EXCLUSIVE_THREAD": "Exclusive_Thread",
          "2": "Prohibited", "PROHIBITED": "Prohibited", "3": "Exclusive_Process", "EXCLUSIVE_PROCESS": "Exclusive_Process"}
_ON_OFF = {"0": False, "DISABLED": False, "1": True, "ENABLED": True}


def _watts(text: str) -> str:
    w = float(text)
    if not 200.0 <= w <= 700.0:  # an H100 SXM's range [U]; outside it nvidia-smi refuses
        raise ValueError(text)
    return f"{w:.2f}"


def _clocks(text: str) -> tuple[str, str]:
    mem, gfx = text.split(",")
    return str(int(mem)), str(int(gfx))


# nvidia-smi --help: -c 0/DEFAULT..3/EXCLUSIVE_PROCESS, -pl watts, -ac <memory,graphics>,
# -am 0/DISABLED 1/ENABLED, -pm 0/DISABLED 1/ENABLED. Option -> (what it sets, how it reads the value).
SETTERS = {"-c": ("compute_mode", lambda v: _MODES[v.upper()]), "-pl": ("power.limit", _watts),
           "-ac": ("ac", _clocks), "-am": ("accounting.mode", lambda v: "Enabled" if _ON_OFF[v.upper()] else "Disabled"),
           "-pm": ("persistence_mode", lambda v: _ON_OFF[v.upper()])}
SMI_FIELDS = (*SETTINGS_DEFAULTS, "persistence_mode", "mig.mode.current", "mig.mode.pending")


@dataclass(frozen=True)
class LoadChild:
    """One simulated load child: its pid and the device nodes its CUDA init held open while it ran."""

    pid: int
    bdf: str
    env: dict[str, str]
    opened: tuple[str, ...]  # names under /dev


class SimRunner:
    def __init__(self, kernel: SimKernel) -> None:
        self._kernel = kernel
        self.calls: list[tuple[str, ...]] = []
        self.loads: list[LoadChild] = []  # every load child, in order (what tests look at)
        # False: each load runs the real child process (python -m gpusoak.load on numpy), as a
        # plain run does, so that a broken install (no numpy) shows. True: the same checking code
        # answers in this process, for profiles and benchmarks, whose thousands of cycles would
        # otherwise spend their time starting Python.
        self.load_in_process = False

    def run(self, argv: Sequence[str], *, timeout_s: float,
            env: Mapping[str, str] | None = None) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        argv = tuple(argv)
        self.calls.append(argv)
        start = self._kernel.clock.monotonic()
        code, out, err = self._answer(argv, dict(env or {}))
        return CommandResult(argv, code, out, err, self._kernel.clock.monotonic() - start)

    def _answer(self, argv: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, str]:
        name, args = argv[0], argv[1:]
        if argv == ("uname", "-r"):
            return 0, self._kernel.scenario.kernel + "\n", ""
        if name == "nvidia-smi" and args[:1] in (("-r",), ("--gpu-reset",)):
            return self._gpu_reset(args)
        if name == "nvidia-smi" and args[:1] == ("mig",):
            return self._smi_mig(args[1:])
        if name == "nvidia-smi" and args == ("-L",):
            return self._smi_list()
        if name == "nvidia-smi" and any(a.startswith("--query-gpu=") for a in args):
            return self._smi_query(args)
        if name == "nvidia-smi" and set(args) & set(SETTERS):
            return self._smi_set(args)
        if name == "rmmod" and len(args) == 1:
            return self._rmmod(args[0])
        if name == "modprobe" and len(args) == 1:
            return self._modprobe(args[0])
        if name == "modprobe" and ("--show-depends" in args or "-D" in args):
            return self._show_depends(tuple(a for a in args if a not in ("--show-depends", "-D")))
        if name == "modinfo":
            return self._modinfo(args)
        if name == "systemctl" and args[:1] == ("is-active",) and len(args) > 2:
            answers = [self._systemctl("is-active", u) for u in args[1:]]  # one state a line, in order
            return min(a[0] for a in answers), "".join(a[1] for a in answers), ""
        if name == "systemctl" and len(args) == 2:
            return self._systemctl(*args)
        if args[:2] == ("-m", "gpusoak.load"):
            return self._load(args[2:], env)
        if args[:2] == ("-m", nvml_child.__name__):
            return self._nvml_child(args[2:])
        # POSIX Shell Command Language 2.8.2: a command that is not found exits 127.
        return 127, "", f"{name}: command not found (simulated node)"

    # -- nvidia-smi -r -------------------------------------------------------------------------
    def _gpu_reset(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        # Exit codes 0/2/6/9/15/255 and the refusal while any client holds the GPU: nvidia-smi
        # documentation (reference 4.1, 6). The message texts below are the simulator's [U]: not
        # checked against a real nvidia-smi.
        k = self._kernel
        if "nvidia" not in k.modules:
            return 9, "", ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                           "Make sure that the latest NVIDIA driver is installed and running.\n")
        if "-i" not in args or args.index("-i") + 1 >= len(args):
            return 2, "", "Resetting all GPUs at once is not supported by this simulated node; pass -i.\n"
        targets = args[args.index("-i") + 1].split(",")  # a comma-separated list of GPUs [U]
        group: list[tuple[PciAddress, GpuState]] = []
        for target in targets:
            try:
                bdf = PciAddress.parse(target.lower())
            except Exception:
                return 6, "", f"No devices were found matching {target}.\n"
            st = k.gpus.get(bdf)
            if st is None or k.driver_of(bdf) != "nvidia":
                return 6, "", f"No devices were found matching {target}.\n"
            if not st.alive or not driver_reset.use(k, st):
                return 15, "", f"Unable to determine the device handle for GPU {bdf.nvml_bus_id}: GPU is lost.\n"
            group.append((bdf, st))
        named = {b for b, _ in group}
        for bdf, st in group:
            # nvidia-smi -r: before Ampere, NVLink peers must be in the same command (reference 4.1); message text [U].
            missing = [p for p in nvlink_peers(k, bdf) if p not in named]
            if st.spec.arch in PRE_AMPERE and missing:
                return 255, "", (f"GPU {bdf.nvml_bus_id} is NVLink-connected to {', '.join(p.nvml_bus_id for p in missing)}; "
                                 "they must be reset together.\n")
            # nvidia-smi refuses while any client, monitoring ones included, has the GPU open.
            if k.procs.holders(DeviceNumber(NVIDIA_MAJOR, k.minor(bdf))):
                return 255, "", (f"The following GPUs could not be reset:\n  GPU {bdf.nvml_bus_id}: In use by another client\n"
                                 f"\n1 device is currently being used by one or more other processes.\n")
        failed = [b for b, st in group if not k.apply_reset(st, "gpu_reset")]
        for b, st in group:
            if b not in failed:
                k.rm_initialised(st)
        if failed:
            return 255, "", "".join(f"GPU {b.nvml_bus_id}: Unknown Error\n" for b in failed)
        return 0, "".join(f"GPU {b.nvml_bus_id} was successfully reset.\n" for b, _ in group) + "All done.\n", ""

    # -- NVML queries --------------------------------------------------------------------------
    def _nvml_child(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        """The NVML query child, answered in process: the real child code runs against the simulated
        NVML as a process of its own in the process table, so its device files are open while it
        runs and closed when it exits, as on a real node."""
        procs = self._kernel.procs
        pid = procs.spawn("python3 -m gpusoak.host.nvml_child")
        try:
            doc = nvml_child.answer(args[0] if args else "", args[1] if len(args) > 1 else None,
                                    SimNvmlLib(self._kernel, pid))
        finally:
            procs.exit(pid)
        return 0, json.dumps(doc, default=str) + "\n", ""

    # -- nvidia-smi --query-gpu and the settings it sets ----------------------------------------
    def _smi_gpus(self, args: tuple[str, ...]) -> tuple[list, tuple[int, str, str] | None]:
        """The GPUs ``-i`` names (a bus id, a UUID or an index; all without it), or the error
        nvidia-smi answers with (exit codes from the nvidia-smi documentation, reference 4.1)."""
        k = self._kernel
        if "nvidia" not in k.modules:
            return [], (9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                        "Make sure that the latest NVIDIA driver is installed and running.\n")
        bound = [st for b, st in sorted(k.gpus.items()) if k.driver_of(b) == "nvidia"]
        if "-i" not in args:
            return bound, None
        target = args[args.index("-i") + 1] if args.index("-i") + 1 < len(args) else ""
        match = [st for i, st in enumerate(bound)
                 if target in (st.spec.uuid, str(i)) or _same_bus_id(target, st.spec.bdf)]
        if not match:
            return [], (6, "", f"No devices were found matching {target}.\n")  # [U] wording
        if not match[0].alive:
            return [], (15, "", f"Unable to determine the device handle for GPU {match[0].spec.bdf.nvml_bus_id}: "
                        "GPU is lost.  Reboot the system to recover this GPU\n")
        return match, None

    def _smi_query(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        query = next(a for a in args if a.startswith("--query-gpu=")).split("=", 1)[1].split(",")
        unknown = [q for q in query if q != "pci.bus_id" and q not in SMI_FIELDS]
        if unknown:
            return 2, "", f'Field "{unknown[0]}" is not a valid field to query.\n\n'
        gpus, error = self._smi_gpus(args)
        if error is not None:
            return error
        rows = []
        for st in gpus:
            values = {"pci.bus_id": st.spec.bdf.nvml_bus_id, **st.settings,
                      "persistence_mode": "Enabled" if st.health["persistence_mode"] else "Disabled",
                      "mig.mode.current": st.mig.current or "[N/A]", "mig.mode.pending": st.mig.pending or "[N/A]"}
            rows.append(", ".join(values[q] for q in query))
        return 0, "".join(r + "\n" for r in rows), ""

    def _smi_one(self, args: tuple[str, ...], what: str) -> tuple[GpuState | None, tuple[int, str, str] | None]:
        """The one GPU ``-i`` names, or the answer nvidia-smi gives instead."""
        if "-i" not in args:
            return None, (2, "", f"This simulated node {what} one GPU at a time; pass -i.\n")
        gpus, error = self._smi_gpus(args)
        return (None, error) if error is not None else (gpus[0], None)

    def _smi_mig(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        """``nvidia-smi mig ... -i BUS`` (sim.mig); one GPU at a time."""
        st, error = self._smi_one(args, "manages MIG")
        if error is not None:
            return error
        index = self._kernel.nvml_index(st.spec.bdf)
        rest = tuple(a for i, a in enumerate(args) if a != "-i" and (i == 0 or args[i - 1] != "-i"))
        return sim_mig.command(st.mig, index, rest, f"{self._kernel.scenario.seed}:{st.spec.uuid}:{st.resets}")

    def _smi_list(self) -> tuple[int, str, str]:
        """``nvidia-smi -L``: ``GPU i: <name> (UUID: GPU-...)``, then one ``MIG <profile> Device n:
        (UUID: MIG-...)`` line per MIG device (MIG user guide; sample from driver 510.47.03)."""
        gpus, error = self._smi_gpus(())
        if error is not None:
            return error
        lines = []
        for i, st in enumerate(gpus):
            lines.append(f"GPU {i}: {st.spec.model} (UUID: {st.spec.uuid})")
            for n, ((gi, _ci), uuid) in enumerate(sorted(st.mig.cis.items())):
                name = sim_mig.PROFILES[st.mig.gis[gi][0]][0]
                lines.append(f"  MIG {name:<12} Device {n:2d}: (UUID: {uuid})")
        return 0, "".join(line + "\n" for line in lines), ""

    def _smi_set(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        st, error = self._smi_one(args, "sets GPU settings")
        if error is not None:
            return error
        (option,) = set(args) & set(SETTERS)
        value = args[args.index(option) + 1] if args.index(option) + 1 < len(args) else ""
        key, parse = SETTERS[option]
        bus_id = st.spec.bdf.nvml_bus_id
        field = "clocks.applications.graphics" if key == "ac" else key
        if field in st.settings and _not_available(st.settings[field]):
            return 3, "", f"Setting {key} is not supported for GPU {bus_id}.\nTreating as warning and moving on.\n"
        try:
            parsed = parse(value)
        except (ValueError, KeyError, IndexError):
            return 2, "", 'Invalid combination of input arguments. Please run "nvidia-smi -h" for help.\n'
        if key == "persistence_mode":
            st.health["persistence_mode"] = parsed
        elif key == "ac":
            st.settings["clocks.applications.memory"], st.settings["clocks.applications.graphics"] = parsed
        else:
            st.settings[key] = parsed
        return 0, f"Set {key} to {value} for GPU {bus_id}.\nAll done.\n", ""  # wording [U]

    # -- load ----------------------------------------------------------------------------------
    def _load(self, args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, str]:
        """The load child: the real checking code runs, on numpy at a small size (this machine's CPU,
        no device touched); the simulated GPU's state decides what it can see. While it runs, the
        child holds the device nodes CUDA's initialisation opened (see _cuda_init)."""
        k = self._kernel
        opts = dict(zip(args[::2], args[1::2], strict=False))
        try:
            bdf = PciAddress.parse(opts.get("--bdf", ""))
        except Exception:
            return _load_answer(protocol.BAD_OPTION, {"error": "bad --bdf"})
        pid = k.procs.spawn("python3")
        try:
            visible = self._cuda_init(pid, env)
            self.loads.append(LoadChild(pid, str(bdf), dict(env), k.procs.held_by(pid)))
            return self._run_load(bdf, opts, visible, pid)
        finally:
            k.procs.exit(pid)

    def _cuda_init(self, pid: int, env: dict[str, str]) -> list[PciAddress]:
        """What a CUDA process's initialisation opens: /dev/nvidiactl, /dev/nvidia-uvm, and the
        /dev/nvidiaN of every GPU it can see, held for the process's life [I: observed with lsof on
        CUDA processes; the documented part is which GPUs are visible, CUDA Programming Guide 5.2,
        CUDA_VISIBLE_DEVICES]. Unset: every GPU. Set: the listed ones, by UUID (a unique prefix
        will do) or index, up to the first entry that names none. Returns the visible GPUs in
        CUDA's order."""
        k = self._kernel
        bound = [b for b in sorted(k.gpus) if k.gpus[b].alive and k.driver_of(b) == "nvidia"]
        spec = env.get("CUDA_VISIBLE_DEVICES")
        visible: list[PciAddress] = []
        if spec is None:
            visible = [b for b in bound if k.gpus[b].mig.current != "Enabled" or k.gpus[b].mig.cis]
        else:
            for entry in (e.strip() for e in spec.split(",")):
                # A MIG-enabled GPU is seen only through its MIG devices, by MIG UUID (MIG user
                # guide, "CUDA Device Enumeration"); its own GPU UUID names no device [U].
                match = [b for b in bound if entry and k.gpus[b].mig.current != "Enabled"
                         and k.gpus[b].spec.uuid.startswith(entry)]
                match += [b for b in bound if entry.startswith("MIG-") and entry in k.gpus[b].mig.cis.values()]
                if entry.isdigit() and int(entry) < len(bound):
                    match = [bound[int(entry)]]
                if len(match) != 1:
                    break  # an entry that names no single GPU ends the list
                visible.append(match[0])
        if not visible:
            return []
        k.procs.open(pid, "nvidiactl")
        k.procs.open(pid, "nvidia-uvm")
        for b in visible:
            k.procs.open(pid, f"nvidia{k.minor(b)}")
        return visible

    def _run_load(self, bdf: PciAddress, opts: dict[str, str], visible: list[PciAddress],
                  pid: int) -> tuple[int, str, str]:
        k = self._kernel
        st = k.gpus.get(bdf)
        seconds = float(opts.get("--seconds", "20"))
        bound = st is not None and k.driver_of(bdf) == "nvidia"
        if st is None or not st.alive or not bound or bdf not in visible or not driver_reset.use(k, st):
            lost = st is not None and (not st.alive or (bound and st.rm_lost))
            why = "GPU lost mid-load: cudaErrorDevicesUnavailable" if lost else "no CUDA device at that bus id"
            return _load_answer(protocol.GPU_FAILED, {"bdf": str(bdf), "error": why})
        if not fabric.cuda_ready(k, st):
            # Fabric Manager user guide: CUDA initialisation fails with cudaErrorSystemNotReady until
            # the GPU's fabric registration has completed (sim.fabric).
            why = "cudaErrorSystemNotReady: the GPU has not joined the NVLink fabric"
            return _load_answer(protocol.GPU_FAILED, {"bdf": str(bdf), "error": why})
        argv = [sys.executable, "-m", "gpusoak.load", "--bdf", str(bdf), "--array", "numpy",
                "--seconds", "0", "--gemm-size", "32", "--vram-bytes", str(1 << 18),
                "--chunk-bytes", str(1 << 17), "--sysfs-root", opts.get("--sysfs-root", "/sys")]
        if st.corrupt:
            argv += ["--inject-corruption", "4"]
        # The child (``_load``'s process) holds what CUDA's initialisation opened while this runs.
        # While it runs the GPU is in use, and its link runs at the trained speed (SimKernel._speed_now);
        # the child reads the link from the simulated sysfs tree itself, as it does /sys on a node.
        k.load_begin(bdf)
        try:
            if self.load_in_process:
                code, out, err = self._load_here(argv[3:], pid)
            else:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
                code, out, err = done.returncode, done.stdout, done.stderr
            k.clock.advance(seconds)  # on a GPU the load takes the time it was given
        finally:
            k.load_end(bdf)
        st.loaded = True
        if not st.alive or st.rm_lost:
            # Lost while the load ran (a late fault, sim.profiles.LateGspTimeout): the child's next
            # CUDA call fails and it exits with the error, whatever its checks found until then.
            # Which CUDA error a GPU lost to RM returns is the simulator's [I].
            why = "GPU lost mid-load: cudaErrorDevicesUnavailable"
            return _load_answer(protocol.GPU_FAILED, {"bdf": str(bdf), "error": why})
        return code, out, err

    @staticmethod
    def _load_here(args: Sequence[str], pid: int) -> tuple[int, str, str]:
        """The child's own code (gpusoak/load/__main__.py ``run``) in this process: the same
        document and status, with the simulated process's pid."""
        from gpusoak.load.__main__ import run as load_run

        doc = load_run(list(args))
        doc["pid"] = pid
        return doc["exit"], json.dumps(doc) + "\n", ""

    # -- modules -------------------------------------------------------------------------------
    # kmod's tools, reading the simulated /lib/modules (sim.modules) and /sys/module. Messages are
    # kmod's: tools/log.c prefixes "<program>: <PRIORITY>: "; modprobe's "not found" is LOG at
    # LOG_CRIT (FATAL), the others ERR.
    def _rmmod(self, module: str) -> tuple[int, str, str]:
        k = self._kernel
        module = modules.canonical(module)
        if module not in k.modules:
            return 1, "", f"rmmod: ERROR: Module {module} is not currently loaded\n"
        # kmod tools/rmmod.c check_module_inuse: holders first (/sys/module/M/holders), then refcnt.
        users = module_holders(k.tree, module)
        if users:
            return 1, "", f"rmmod: ERROR: Module {module} is in use by: {' '.join(users)}\n"
        refcnt = (k.root / "module" / module / "refcnt").read_text().strip()
        if refcnt != "0" or (module == "nvidia" and self._device_users()):
            return 1, "", f"rmmod: ERROR: Module {module} is in use\n"
        if module == "nvidia_uvm" and k.procs.holders(DeviceNumber(UVM_MAJOR, ANY_MINOR)):
            return 1, "", "rmmod: ERROR: Module nvidia_uvm is in use\n"
        k.modules.discard(module)
        unload_module(k.tree, module)
        if module == "nvidia":
            k.unbind_all("nvidia")
        k.update_refcnt()
        k.published.sync(k)
        return 0, "", ""

    def _device_users(self) -> list[int]:
        # Every open of a device file takes a reference on the module that owns its cdev
        # (fs/char_dev.c chrdev_open -> cdev_get -> try_module_get(owner)): nvidia owns major 195
        # and nvidia-caps (nv-caps.c: cdev.owner = THIS_MODULE), so rmmod refuses while any is open.
        k = self._kernel
        numbers = [DeviceNumber(NVIDIA_MAJOR, ANY_MINOR), DeviceNumber(CAPS_MAJOR, ANY_MINOR)]
        return sorted({pid for n in numbers for pid in k.procs.holders(n)})

    def _release_dir(self, root: str | None, release: str | None) -> tuple[Path, str]:
        """The folder kmod reads (``-d``/``-b`` ROOT + /lib/modules/RELEASE) and its name as kmod
        prints it. Without ROOT, the simulated node's own root (what its "/" is); a ROOT outside
        the simulated node has nothing in it."""
        k = self._kernel
        release = release or k.scenario.kernel
        if root is None:
            return modules.release_dir(k.root.parent, release), f"/lib/modules/{release}"
        base = Path(root)
        if base != k.root.parent and k.root.parent not in base.parents:
            base = k.root.parent / "nonexistent"
        return modules.release_dir(base, release), f"{root.rstrip('/')}/lib/modules/{release}"

    def _modinfo(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        """``modinfo [-b ROOT] [-k RELEASE] [-F FIELD] MODULE`` (kmod tools/modinfo.c)."""
        opts, names = _options(args, {"-b", "-k", "-F"})
        if len(names) != 1:
            return 1, "", "modinfo: ERROR: missing module or filename.\n"
        base, _ = self._release_dir(opts.get("-b"), opts.get("-k"))
        name = modules.canonical(names[0])
        entry = (modules.index(base) or {}).get(name)
        if entry is None:
            return 1, "", f"modinfo: ERROR: Module {names[0]} not found.\n"
        info = modules.modinfo(base / entry[0])
        if info is None:
            return 1, "", f"modinfo: ERROR: could not get modinfo from '{name}': No such file or directory\n"
        if "-F" in opts:
            return 0, "".join(v + "\n" for v in info.get(opts["-F"], [])), ""
        lines = [f"{'filename:':<16}{base / entry[0]}"] + [f"{key + ':':<16}{v}" for key, vs in info.items() for v in vs]
        return 0, "".join(line + "\n" for line in lines), ""

    def _show_depends(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        """``modprobe [-d ROOT] [-S RELEASE] --show-depends MODULE``: dry run, ignoring what is
        loaded (kmod tools/modprobe.c, -D sets ignore_loaded); one ``insmod PATH OPTIONS`` line
        per module, dependencies first (print_action). The path is printed, not opened."""
        opts, names = _options(args, {"-d", "-S"})
        base, shown = self._release_dir(opts.get("-d"), opts.get("-S"))
        index = modules.index(base) or {}
        out = []
        for name in names:
            entry = index.get(modules.canonical(name))
            if entry is None:
                return 1, "".join(out), f"modprobe: FATAL: Module {name} not found in directory {shown}\n"
            for path in [*reversed(entry[1:]), entry[0]]:
                out.append(f"insmod {base / path} \n")
        return 0, "".join(out), ""

    def _modprobe(self, module: str) -> tuple[int, str, str]:
        k = self._kernel
        module = modules.canonical(module)
        if module in k.modules:
            return 0, "", ""
        base, shown = self._release_dir(None, None)
        entry = (modules.index(base) or {}).get(module)
        if entry is None:
            return 1, "", f"modprobe: FATAL: Module {module} not found in directory {shown}\n"
        # modprobe(8): modules.dep "lists what other modules each module needs (if any), and
        # modprobe uses this to add or remove these dependencies automatically"; kmod
        # tools/modprobe.c insmod inserts them before the module.
        for dep in modules.dependencies(module):  # modprobe loads what a module needs first
            if dep not in k.modules and (failed := self._modprobe(dep))[0] != 0:
                return failed
        info = modules.modinfo(base / entry[0])
        if info is None:
            # kmod_module_insert_module cannot open the indexed file: -ENOENT, which modprobe's
            # insmod_insert words as below (tools/modprobe.c).
            return 1, "", (f"modprobe: ERROR: could not insert '{module}': Unknown symbol in module, "
                           "or unknown parameter (see dmesg)\n")
        version = (info.get("version") or [None])[0]
        k.modules.add(module)
        load_module(k.tree, module, version, tuple(u for u in modules.USES.get(module, ()) if u in k.modules))
        k.update_refcnt()
        if module == "nvidia":
            # kernel-open/nvidia/nv.c nvidia_init_module: nv_printf "NVRM: loading %s" with pNVRM_ID
            # ("NVIDIA UNIX Open Kernel Module for <arch>  <version>  Release Build  (<builder>)
            # <date>", src/nvidia/Makefile GENERATE_NVIDSTRING). The real line comes after
            # nv_drivers_init has probed the GPUs; logging it before probe_all is a simplification [I].
            k.log(KERN_INFO, f"NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  {version}  "
                  "Release Build  (gpusoak simulated node)")
            k.probe_all(fresh=True)
        k.published.sync(k)
        return 0, "", ""

    # -- services ------------------------------------------------------------------------------
    def _systemctl(self, verb: str, unit: str) -> tuple[int, str, str]:
        services = self._kernel.services
        name = unit.removesuffix(".service")
        # systemctl is-active: 0 when active, else 3 ("program is not running", the LSB status
        # codes in systemd src/systemctl/systemctl-util.h), printing one state a line. 5 for a
        # stop/start of an unknown unit is systemd.exec(5) EXIT_NOTINSTALLED; that systemctl maps
        # "Unit ... not loaded." to it, and the message text, are [U].
        if verb == "is-active":
            state = services.get(name, "inactive")
            return (0 if state == "active" else 3), state + "\n", ""
        if name not in services:
            return 5, "", f"Failed to {verb} {name}.service: Unit {name}.service not loaded.\n"
        if verb in ("stop", "start"):
            # A GPU service's process closes (stop) or opens (start) its device files.
            (sim_services.stop if verb == "stop" else sim_services.start)(self._kernel, name)
            return 0, "", ""
        return 1, "", f"Unknown command verb {verb}.\n"


def _load_answer(verdict: str, doc: dict) -> tuple[int, str, str]:
    """What the load child prints and exits with when the simulated GPU cannot be loaded at all
    (gpusoak/load/protocol.py: its document, with the status it names)."""
    return protocol.EXIT[verdict], json.dumps({**doc, "verdict": verdict, "exit": protocol.EXIT[verdict]}) + "\n", ""
