"""One soak: the node, its GPUs' idle baselines, and one cycle at a time into the journal.

    preconditions -> kernel-log cursor -> action.perform (deadline) -> verify.await_recovery
    -> (failed: the recovery ladder) -> CycleResult -> journal (fsync'd) -> next cycle
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gpusoak import gpu_settings, ladder, mig, verify
from gpusoak import state as node_state
from gpusoak.actions import ACTION_SEMANTICS, ACTIONS, Context, release, services
from gpusoak.actions.base import BUS_BUSY, NOT_AUTHORISED, holder_refusals, slot_functions, write
from gpusoak.errors import Busy, GpusoakError, Hung, UsageError
from gpusoak.host import kmsg
from gpusoak.host.node import Node
from gpusoak.host.procs import own_device_files
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.journal import AFTER_CYCLE, Journal
from gpusoak.load.child import run_load
from gpusoak.model import (
    FAILED,
    HUNG,
    INCONCLUSIVE,
    RECOVERED,
    REFUSED,
    SKIPPED,
    Check,
    CycleResult,
    Finding,
    PciAddress,
    Snapshot,
    link_capability,
    link_gts,
)
from gpusoak.options import validate_fields
from gpusoak.verdict import gates as health_gates
from gpusoak.verdict import refusals
from gpusoak.verdict.gates import GateLimits

OUT_OF_SERVICE = "out_of_service"
NOT_HEALTHY_BEFORE = "not_healthy_before_soak"
HEALTH_GATE = "health_gate"
GPUSOAK_ERROR = "gpusoak_error"
RESET_WRITE_FAILED = "reset_write_failed"
RECOVERY_TIMEOUT = "recovery_timeout"
UNSETTLED = "recovery_did_not_hold"  # every check passed, then one failed again inside the settle window
PERSISTENCED = "nvidia-persistenced"
CANNOT_LOOK = "cannot_look"  # a recovery check could not look: the cycle is inconclusive
NO_POST_CHECK = "post_check_cannot_load"  # a post-check asked for on a GPU CUDA cannot use: not looked at
LOAD_CHARGED = refusals.LOAD_CHARGED  # the load before this reset failed: the previous cycle's doing
SELF_HELD = "gpusoak_holds_device"  # gpusoak's own process has an NVIDIA device file open: its bug, never the GPU's


@dataclass(frozen=True)
class SoakOptions:
    cycles: int = 20
    actions: tuple[str, ...] = ("flr",)
    recovery_deadline_s: float = 60.0  # verification polls this long after the action returns
    # Recovery holds only if every check stays good this long after they first all pass: delayed
    # driver reactions (a GSP RPC timeout, Xid 119, is logged only after its timeout) land in it.
    settle_s: float = 10.0
    write_timeout_s: float = 90.0  # FLR alone may legitimately block 65 s before the kernel gives up
    command_timeout_s: float = 180.0
    destructive: bool = False  # required on a real node; the simulator needs no opt-in
    # A destructive run stops the GPU services once, before its first cycle, and starts them again
    # at the end (also after a failure; after a crash, `gpusoak restore`). True: keep them running,
    # and an active one refuses every action (gpusoak/actions/services.py).
    keep_services: bool = False
    ladder: bool = True  # climb the recovery ladder after a failed cycle
    ladder_module_reload: bool = True  # may the ladder reload the driver (affects every GPU)?
    gates: GateLimits = field(default_factory=GateLimits)
    load_seconds: float = 0.0  # compute + VRAM load before each cycle, in a child process (0: none)
    load_fraction: float = 0.9  # share of free GPU memory the load fills
    post_check_seconds: float = 0.0  # a short load after recovery proves the GPU computes correctly
    # Soak GPUs with MIG enabled: their GPU/compute instance layout is saved, recreated after each
    # cycle and checked (mig_layout), and the load runs on their first MIG device. Without it such
    # a GPU is refused (mig_enabled): a reset destroys its instances (gpusoak/mig.py).
    allow_mig: bool = False
    # The node's scheduler names GPUs by /dev/nvidiaN or by index (Slurm gres.conf File=/dev/nvidiaN,
    # a device plugin or jobs by index): a minor or index that changed fails the cycle. Without it
    # the change is a finding on a recovered cycle.
    identity_strict: bool = False

    def __post_init__(self) -> None:
        validate_fields(asdict(self))  # the one table of what each option may be (gpusoak/options.py)
        unknown = [a for a in self.actions if a not in ACTIONS]
        if unknown:
            raise UsageError(f"unknown action(s) {', '.join(unknown)}; known: {', '.join(ACTIONS)}")
        if not self.actions:
            raise UsageError("no actions to run")

    @property
    def context(self) -> Context:
        return Context(self.write_timeout_s, self.command_timeout_s, not self.keep_services)

    def context_for(self, devices: list[PciAddress]) -> Context:
        """The context of a run over these functions (node-scope actions act for them)."""
        return Context(self.write_timeout_s, self.command_timeout_s, not self.keep_services, tuple(devices))


@dataclass(frozen=True)
class _Window:
    result: CycleResult  # the judged cycle
    cursor: int  # the kernel-log cursor at its start


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Soak:
    def __init__(self, node: Node, run_id: str, options: SoakOptions, gpus: list[PciAddress]) -> None:
        self.node = node
        self.journal: Journal | None = None
        self.run_id = run_id
        self.options = options
        self.gpus = gpus
        self.ctx = options.context_for(gpus)
        self.profile: dict | None = None  # the profile and plan of a scheduled run, for the journal header
        self.carried: dict | None = None  # evidence taken over from earlier runs (gpusoak.carry.Carry.to_dict)
        self.gate = None  # the scheduler's NodeGate, when GPUs run in parallel
        self.parallel = False  # set by the scheduler when other GPUs' cycles run at the same time
        self.node_name: str | None = None  # the node's name in Slurm or Kubernetes
        # Every NVIDIA GPU on the bus at the start, tested or not, and the inventory the node kept
        # from its previous run (gpusoak/inventory.py): what was not tested cannot admit.
        # SR-IOV virtual functions (a vGPU host's) are left out: they exist only while sriov_numvfs
        # says so, and are gone after every reboot until the service that makes them has run.
        self.found: list[PciAddress] = [g for g in node.gpus()
                                        if not (node.sysfs.devices_dir / str(g) / "physfn").exists()]
        self.previous_inventory: dict | None = None

        self.baselines: dict[PciAddress, Snapshot] = {}
        # The link speed under load before the first reset (the first cycle's load), which the
        # post-check's reading under load is compared with: an idle GPU's link speed drops.
        self.loaded_speeds: dict[PciAddress, str | None] = {}
        self.reset_once: set[PciAddress] = set()  # GPUs an action has run on
        self.link_warnings: dict[PciAddress, list[str]] = {}  # below capability before any reset
        # GPUs CUDA cannot load (not bound to nvidia at the baseline: vfio-pci for a VM, no driver,
        # another vendor's function): no load and no post-check, and the reports say so.
        self.no_load: dict[PciAddress, str] = {}
        # Why a GPU was taken out: its reason and the findings behind it (skipped cycles carry them).
        self._out_findings: dict[PciAddress, tuple[str, tuple[Finding, ...]]] = {}
        self.readings: dict[PciAddress, health_gates.Reading] = {}
        self.gate_results: dict[PciAddress, list[health_gates.Gate]] = {}
        self.out_of_service: dict[PciAddress, str] = {}
        self.saved_state: node_state.NodeState | None = None
        self.mig: dict[PciAddress, mig.MigState] = {}  # MIG mode and layout before the first reset
        # Each GPU's last cycle whose kernel-log window is still open: it runs on to the start of the
        # GPU's next reset (that cycle's load included), or to the end of the run.
        self._open: dict[PciAddress, _Window] = {}
        self._after: list[dict] = []  # after_cycle records not yet taken by the scheduler
        self._windows_lock = threading.Lock()
        self._nvidia_at_start = self._nvidia_driven()
        for bdf in gpus:
            self._take_baseline(bdf)

    def exclusive(self) -> contextlib.AbstractContextManager:
        """Node-wide work from inside a per-GPU cycle (the ladder's module reload): wait until no
        other GPU's cycle runs. Without a scheduler there is nothing to wait for."""
        return self.gate.upgrade() if self.gate is not None else contextlib.nullcontext()

    # -- before ------------------------------------------------------------------------------
    def _take_baseline(self, bdf: PciAddress) -> None:
        """The idle reading every later cycle is compared with, taken before anything is reset,
        and the health gate: a GPU that fails it is not soaked, and the journal says why."""
        snap = verify.snapshot(self.node, bdf)
        self.baselines[bdf] = snap
        self.link_warnings[bdf] = self._link_deficit(bdf, snap, None)
        fn = self.node.sysfs.function(bdf)
        if (self.options.load_seconds > 0 or self.options.post_check_seconds > 0) and \
                (fn.vendor != NVIDIA_VENDOR or fn.driver != "nvidia"):
            self.no_load[bdf] = (f"no load and no post-check: bound to {fn.driver or 'no driver'}, which CUDA "
                                 "cannot use; without a post-check its cycles cannot pass "
                                 "(--post-check-seconds 0 judges them on sysfs alone)")
        failed = [c for c in verify.compare(snap, snap) if c.status == verify.FAIL]
        # On an NVSwitch node, a GPU out of the fabric before any reset would fail every cycle for
        # what it already was (fabric_not_completed): it is not soaked, and says why.
        if not failed and snap.present and self.node.sysfs.function(bdf).vendor == NVIDIA_VENDOR and \
                (fabric := verify.fabric_check(self.node, bdf)).status == verify.FAIL:
            failed = [fabric]
        if failed:
            self._take_out(bdf, NOT_HEALTHY_BEFORE, "; ".join(c.detail for c in failed),
                           [Finding(c.name, c.detail) for c in failed])
            return
        reading = self.reading(bdf)
        self.readings[bdf] = reading
        self.gate_results[bdf] = health_gates.evaluate(reading, None, self.options.gates)
        refused = [g for g in self.gate_results[bdf] if g.status == health_gates.FAIL]
        if refused:
            self._take_out(bdf, HEALTH_GATE, "; ".join(f"{g.name}: {g.detail}" for g in refused),
                           [Finding(f"gate_{g.name}", g.detail) for g in refused])

    def _take_out(self, bdf: PciAddress, reason: str, detail: str, findings: list[Finding] | None = None) -> None:
        """Take a GPU out of the run: its later cycles are skipped with ``reason`` and the
        findings behind it (structured, for the verdict), and ``out_of_service`` says it in words."""
        self.out_of_service[bdf] = f"{reason}: {detail}"
        self._out_findings[bdf] = (reason, tuple(findings or ()))

    def _link_deficit(self, bdf: PciAddress, snap: Snapshot, loaded_speed: str | None) -> list[str]:
        """Warnings for a link below what the GPU and its port can do before any reset (a
        BIOS-capped generation, an x8-wired slot): the node's build, not a reset's damage, so a
        warning and never a failure; cycles compare with the baseline. Width at idle; speed only
        under load (``loaded_speed``), as an idle GPU lowers its generation."""
        fn = self.node.sysfs.function(bdf)
        try:
            port = fn.upstream_port if fn.present else None
            port_link = self.node.sysfs.function(port).link if port is not None else None
        except GpusoakError:
            return []  # an unreadable port: the baseline's own checks say what is wrong
        max_speed, max_width = link_capability(snap.link, port_link)
        out = []
        width = snap.link.current_width if snap.link else None
        if loaded_speed is None and width and max_width and width < max_width:
            out.append(f"link x{width} before any reset, capable of x{max_width} (GPU and port)")
        if loaded_speed is not None and max_speed and (link_gts(loaded_speed) or 0.0) < (link_gts(max_speed) or 0.0):
            out.append(f"link {loaded_speed} under load before any reset, capable of {max_speed} (GPU and port)")
        return out

    def reading(self, bdf: PciAddress) -> health_gates.Reading:
        node = self.node
        health = None
        if node.nvml is not None and node.sysfs.function(bdf).vendor == NVIDIA_VENDOR:
            try:
                health = node.nvml.health(bdf)
            except GpusoakError:
                health = None
        fn = node.sysfs.function(bdf)
        aer = fn.aer("correctable") if fn.present else None
        return health_gates.Reading(node.clock.monotonic(), health, None if aer is None else aer.total)

    @property
    def allowed(self) -> bool:
        return self.node.simulated or self.options.destructive

    def start(self, journal_path: Path, state_path: Path | None = None) -> None:
        """Save the node's state (when resets are allowed) and open the journal, whose header records
        the node and the baselines before any reset."""
        resumed: list[str] = []
        if self.allowed:
            self.saved_state = node_state.capture(self.node, self.gpus, self.ctx)
            self.mig = {PciAddress.parse(b): mig.MigState.from_dict(d) for b, d in self.saved_state.mig.items()}
            if state_path is not None:
                node_state.save(self.saved_state, state_path)
            # Saved first (power/control included), so the end of the run, or `gpusoak restore`
            # after a crash, puts runtime PM back as it was.
            for bdf in self.gpus:
                if on := self.hold_d0(bdf):
                    resumed += on
                    self.out_of_service.pop(bdf, None)
                    self._take_baseline(bdf)  # the idle reading again, now in D0
        self.journal = Journal(journal_path, self.header())
        self._report_mig_pending()
        if resumed:
            self.journal.note({"type": "runtime_pm", "control_on": resumed})
        nvidia = [b for b in self.gpus if self.node.sysfs.function(b).vendor == NVIDIA_VENDOR]
        if self.allowed and nvidia and self.node.nvml is None:
            # Said before the first cycle: without NVML no cycle of these GPUs can be shown to recover.
            print(f"gpusoak: NVML is unavailable ({self.node.nvml_unavailable}): every cycle of "
                  f"{len(nvidia)} NVIDIA GPU(s) will be inconclusive, and the node cannot be admitted",
                  file=sys.stderr)
        if self.saved_state is not None:
            self._stop_services(state_path)

    def _report_mig_pending(self) -> None:
        """Said before any reset: a reset applies a pending MIG-mode change (on Ampere), which would
        change the GPU under test; those GPUs' cycles are refused (mig_mode_pending)."""
        for bdf, state in self.mig.items():
            if state.change_pending:
                print(f"gpusoak: {bdf}: MIG mode is {state.current} with {state.pending} pending; a reset "
                      "would apply it: its cycles are refused (mig_mode_pending)", file=sys.stderr)
                self.journal.note({"type": "mig_mode_pending", "bdf": str(bdf), "current": state.current,
                                   "pending": state.pending})
    def hold_d0(self, bdf: PciAddress) -> list[str]:
        """Runtime PM off (power/control on) on each function of the slot that allows it; what was
        written. An idle device with runtime PM allowed suspends (vfio-pci idles in D3hot:
        vfio_pci_core_register_device's pm_runtime_allow and pm_runtime_put; RTD3 under nvidia in
        D3cold), and a cycle compares D0 with D0. The write resumes the device before it returns
        (drivers/base/power/sysfs.c control_store -> pm_runtime_forbid -> rpm_resume). Done before
        the baseline and again after each action (a vfio-pci bind allows runtime PM again);
        state.json keeps the value the end of the run puts back. A write that fails is left to the
        checks: a device still suspended is a power check that could not look."""
        if not self.node.sysfs.function(bdf).present:
            return []
        if self.saved_state is not None and any(f.runtime_pm == "auto" for f in self.saved_state.functions):
            # The bind's uevent runs udev's rules after the bind returns (NVIDIA's RTD3 rule writes
            # auto on bind): let them finish first, or they undo this write mid-poll. A node without
            # udevadm (a container) answers 127, and the polls' power check still sees a late auto.
            self.node.runner.run(["udevadm", "settle", "--timeout=10"], timeout_s=15)
        done = []
        for f in slot_functions(self.node, bdf):
            fn = self.node.sysfs.function(f)
            try:
                if fn.runtime_pm != "auto":
                    continue
                write(self.node, fn.path / "power" / "control", "on", self.ctx, "runtime PM off for the soak")
            except GpusoakError:
                continue
            done.append(str(f))
        return done

    def _stop_services(self, state_path: Path | None) -> None:
        """Stop the active GPU services once for the whole run, not per cycle: started again they
        re-attach every GPU the driver drives, which in a parallel run would hold other GPUs in the
        middle of their cycles; and every cycle then compares like with like. state.json names each
        unit before it is stopped. From here on no holder is excused: each cycle checks them again."""
        self.ctx = replace(self.ctx, services_stopped=True)
        if not self.ctx.stop_services or not any(self.node.sysfs.function(b).vendor == NVIDIA_VENDOR
                                                 for b in self.gpus):
            return
        stopped: list[str] = []
        failed: list[str] = []
        for unit in services.active(self.node, services.STOPPABLE, self.ctx.command_timeout_s):
            self.saved_state = replace(self.saved_state, stopped_services=[*stopped, unit])
            if state_path is not None:
                node_state.save(self.saved_state, state_path)
            r = self.node.runner.run(["systemctl", "stop", unit], timeout_s=self.ctx.command_timeout_s)
            if r.ok:
                stopped.append(unit)
            else:
                failed.append(f"{unit}: systemctl stop exited {r.returncode}: {(r.stderr or r.stdout).strip()}")
        self.saved_state = replace(self.saved_state, stopped_services=stopped)
        if state_path is not None:
            node_state.save(self.saved_state, state_path)
        if stopped or failed:
            self.journal.note({"type": "services", "stopped": stopped, "failed": failed})

    def finish(self) -> list[str]:
        """Close the last cycles' kernel-log windows, then put the node back as it was found; what
        was changed goes to the journal."""
        if self.journal is not None:
            self.close_windows()
        if self.saved_state is None:
            return []
        changes = node_state.restore(self.node, self.saved_state, self.ctx)
        if self.journal is not None:
            self.journal.note({"type": "restore", "changes": changes})
        return changes

    # -- cycles ------------------------------------------------------------------------------
    def run_cycle(self, bdf: PciAddress, action_name: str, cycle: int) -> CycleResult:
        (result,) = self._journaled([bdf], action_name, cycle, lambda: [self._cycle(bdf, action_name, cycle)])
        return result

    def run_node_cycle(self, action_name: str, cycle: int) -> list[CycleResult]:
        """One cycle of a node-scope action: one result per GPU."""
        return self._journaled(self.gpus, action_name, cycle, lambda: self._node_cycle(action_name, cycle))

    def _journaled(self, gpus, action_name, cycle, work) -> list[CycleResult]:
        if self.journal is None:
            raise RuntimeError("Soak.start() opens the journal before the first cycle")
        try:
            results = work()
        except Exception as err:
            # A bug in gpusoak is not the GPU's fault: journal the cycle as not judged, then raise.
            for bdf in gpus:
                self.journal.append(CycleResult(**self._base(bdf, action_name, cycle), outcome=SKIPPED,
                                                duration_s=0.0, findings=(Finding(GPUSOAK_ERROR, f"{type(err).__name__}: {err}"),)))
            raise
        for r in results:
            self.journal.append(r)
        self._put_back_settings(results)
        self._put_back_mig(results)
        return results

    def _put_back_mig(self, results: list[CycleResult]) -> None:
        """Recreate the saved MIG layout after every cycle that touched the GPU (also after a failed
        cycle and the ladder, so the next cycle's load finds its MIG device); journaled when it
        had to be recreated or could not be."""
        for r in results:
            saved = self.mig.get(PciAddress.parse(r.bdf))
            if saved is None or not saved.enabled or r.outcome in (REFUSED, SKIPPED, HUNG):
                continue
            check = mig.recreate(self.node, saved, self.ctx)
            if check.status != verify.PASS or check.detail.startswith("recreated"):
                self.journal.note({"type": "mig", "bdf": r.bdf, "action": r.action, "cycle": r.cycle,
                                   "check": asdict(check)})

    def _put_back_settings(self, results: list[CycleResult]) -> None:
        """Put back the GPU settings a reset, rebind or reload wiped (gpusoak.gpu_settings), after
        every cycle that touched the GPU; what was put back (or could not be) goes to the journal."""
        if self.saved_state is None:
            return
        if PERSISTENCED in self.saved_state.stopped_services:
            # The run stopped nvidia-persistenced, which lets go of every GPU as it exits
            # (nvidia-persistenced.c shutdown_daemon): the GPUs are not persistent until the end, so
            # settings put back now would be torn down with the next close (nv_shutdown_adapter),
            # and `-pm 1` would turn on the deprecated legacy mode instead. restore() puts them
            # back once the daemon runs again.
            return
        for r in results:
            saved = self.saved_state.settings.get(r.bdf)
            if saved is None or r.outcome in (REFUSED, SKIPPED, HUNG):
                continue  # nothing was done to it, or a write to it is still in the kernel
            changes = gpu_settings.put_back(self.node, gpu_settings.GpuSettings.from_dict(saved), self.ctx)
            if changes and self.journal is not None:
                self.journal.note({"type": "settings", "bdf": r.bdf, "action": r.action, "cycle": r.cycle,
                                   "changes": [asdict(c) for c in changes]})

    def _base(self, bdf: PciAddress, action_name: str, cycle: int) -> dict:
        return dict(run_id=self.run_id, bdf=str(bdf), uuid=self.baselines[bdf].uuid, action=action_name,
                    cycle=cycle, started_at=_now_iso())

    def _not_now(self, bdf: PciAddress, base: dict) -> CycleResult | None:
        if bdf in self.out_of_service:
            reason, findings = self._out_findings[bdf]
            return CycleResult(outcome=SKIPPED, duration_s=0.0,
                               findings=(Finding(reason, self.out_of_service[bdf]), *findings), **base)
        if not self.allowed:
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=(Finding(
                NOT_AUTHORISED, "a real node is only reset with --destructive (or GPUSOAK_DESTRUCTIVE=1); "
                "this run is read-only"),), **base)
        return None

    def _cycle(self, bdf: PciAddress, action_name: str, cycle: int) -> CycleResult:
        action = ACTIONS[action_name]
        base = self._base(bdf, action_name, cycle)
        if (skip := self._not_now(bdf, base)) is not None:
            return skip
        if held := self._self_held():
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=tuple(held), **base)
        refusals = mig.refusals(self.mig.get(bdf), self.options.allow_mig) or action.refusals(self.node, bdf, self.ctx)
        if refusals:
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=tuple(refusals), **base)
        # The GPU's first cycle opens its window before the load (nothing came before it to own what
        # the load provokes); a later one's load falls in the previous cycle's window.
        first = bdf not in self._open
        cursor = self.node.kmsg.cursor()
        loaded = self._load(bdf, base)
        if (charged := self._close_window(bdf, loaded)) is not None:
            return charged
        if loaded is not None and not isinstance(loaded, dict):
            return replace(loaded, events=tuple(verify.device_events(self.node, bdf, cursor))) if first else loaded
        base["load"] = loaded
        # Again: the load ran since, and a holder may have come during it.
        if held := self._self_held() or holder_refusals(self.node, bdf, self.ctx):
            return CycleResult(outcome=REFUSED, duration_s=0.0, findings=tuple(held), **base)
        cursor = cursor if first else self.node.kmsg.cursor()
        start = self.node.clock.monotonic()
        # The markers bracket the action and its recovery (the ladder included): what the driver
        # logs in between is gpusoak's doing, for other health tools too. Never fails the cycle.
        self.node.kmsg.mark(kmsg.cycle_marker(cycle, action_name, str(bdf), "begin"))
        self.reset_once.add(bdf)
        try:
            try:
                action.perform(self.node, bdf, self.ctx)
                error = None
            except Hung as err:
                self._take_out(bdf, OUT_OF_SERVICE, f"a write hung in cycle {cycle}: {err}")
                return CycleResult(outcome=HUNG, duration_s=self.options.write_timeout_s,
                                   findings=(Finding("hung", str(err)),),
                                   events=tuple(verify.device_events(self.node, bdf, cursor)), **base)
            except Busy as err:
                if err.bind_back is None:
                    # The kernel did not reset (EAGAIN, retried once): no attempt, no verdict on the GPU.
                    # The slot's unbind and bind back around it are not judged (docs/architecture.md).
                    return CycleResult(outcome=SKIPPED, duration_s=self.node.clock.monotonic() - start,
                                       findings=(Finding(err.reason or BUS_BUSY, str(err)),), **base)
                error = err  # the reset did not run, but the slot could not be bound back: judged
            except GpusoakError as err:
                error = err
            self.hold_d0(bdf)
            return self._opened(bdf, self._judge(bdf, base, cursor, start, error), cursor)
        finally:
            self.node.kmsg.mark(kmsg.cycle_marker(cycle, action_name, str(bdf), "end"))

    # -- kernel-log windows that outlast the cycle ----------------------------------------------
    def _opened(self, bdf: PciAddress, result: CycleResult, cursor: int) -> CycleResult:
        """The cycle is judged; its window stays open until this GPU's next reset."""
        with self._windows_lock:
            self._open[bdf] = _Window(result, cursor)
        return result

    def _close_window(self, bdf: PciAddress, loaded: dict | CycleResult | None) -> CycleResult | None:
        """Close the GPU's previous cycle's window, just before the next reset: what the kernel logged
        for the GPU since that cycle was judged, and a failure of the load in between, belong to that
        cycle's action. A failed load is then this cycle's reason not to reset (it never ran); the
        returned result says so. None: go on with this cycle."""
        failed_load = loaded if isinstance(loaded, CycleResult) and loaded.outcome == FAILED else None
        record = self._close(bdf, failed_load, "to the next cycle's reset")
        if failed_load is None or record is None:
            return None
        whose = "charged to" if record["charged"] else "a failure already counted against"
        why = (f"the load before this cycle failed ({failed_load.reason}); {whose} {record['action']} "
               f"cycle {record['cycle']}, whose window it fell in: this cycle's action never ran")
        return replace(failed_load, outcome=REFUSED, findings=(Finding(LOAD_CHARGED, why), *failed_load.findings))

    def close_windows(self) -> list[dict]:
        """The end of the run: the last cycle of each GPU gets what was logged after it."""
        for bdf in list(self._open):
            self._close(bdf, None, "to the end of the run")
        return self.take_after_cycle()

    def take_after_cycle(self) -> list[dict]:
        """The after_cycle records journaled since the last call (the scheduler amends its tally)."""
        with self._windows_lock:
            out, self._after = self._after, []
        return out

    def _close(self, bdf: PciAddress, failed_load: CycleResult | None, until: str) -> dict | None:
        with self._windows_lock:
            window = self._open.pop(bdf, None)
        if window is None or self.journal is None:
            return None
        prev = window.result
        seen = {(e.seq, e.text) for e in prev.events}
        late = [e for e in verify.device_events(self.node, bdf, window.cursor) if (e.seq, e.text) not in seen]
        if not late and failed_load is None:
            return None
        fatal = [e for e in late if verify.is_fatal(e)]
        findings = [Finding(verify.event_reason(e), e.text) for e in fatal]
        if failed_load is not None:
            findings += list(failed_load.findings)
        # Only a cycle that was judged good is charged: a failed one already carries its failure.
        charged = bool(findings) and prev.outcome in (RECOVERED, INCONCLUSIVE)
        record = {"type": AFTER_CYCLE, "run_id": self.run_id, "bdf": str(bdf), "action": prev.action,
                  "cycle": prev.cycle, "window": until, "at": _now_iso(), "charged": charged,
                  "events": [asdict(e) for e in late], "findings": [asdict(f) for f in findings]}
        if failed_load is not None:
            rungs, recovered_by = self._after_failed_load(bdf, prev)
            record.update(ladder=[asdict(f) for f in rungs], recovered_by=recovered_by)
        self.journal.note(record)
        with self._windows_lock:
            self._after.append(record)
        return record

    def _after_failed_load(self, bdf: PciAddress, prev: CycleResult) -> tuple[tuple[Finding, ...], str | None]:
        """The GPU came back from its last cycle but cannot take a load: climb the recovery ladder as
        after a failed cycle; without it (or if nothing brings it back) it is not reset again."""
        if not self.options.ladder:
            self._take_out(bdf, OUT_OF_SERVICE, f"failed its load after {prev.action} cycle {prev.cycle}")
            return (), None
        rungs, recovered_by, _ = ladder.climb(self, bdf)
        if recovered_by == ladder.REBOOT_REQUIRED:
            self._take_out(bdf, ladder.REBOOT_REQUIRED, f"nothing brought it back after cycle {prev.cycle}")
        return rungs, recovered_by

    def _self_held(self) -> list[Finding]:
        """A refusal when gpusoak's own process holds an NVIDIA device file: an NVML session or
        CUDA context in it would block or break the reset. gpusoak's bug, never the GPU's."""
        held = own_device_files(self.node)
        return [] if held is None else [Finding(SELF_HELD, held)]

    def _load(self, bdf: PciAddress, base: dict) -> dict | CycleResult | None:
        """The load before the reset; its child has exited before this returns. A GPU that cannot
        take its load is not reset: the cycle fails (or, without cupy, is refused) with the reason."""
        if bdf in self.no_load:
            return None
        if self.options.load_seconds <= 0:
            if self.options.post_check_seconds <= 0 or self.baselines[bdf].uuid:
                return None
            # The post-check could not run after the reset: refuse the cycle now, before any reset.
            summary = run_load(self.node, bdf, self.options.post_check_seconds, self.options.load_fraction, None)
        else:
            summary = run_load(self.node, bdf, self.options.load_seconds, self.options.load_fraction,
                               self._load_uuid(bdf))
        if summary.ok:
            if bdf not in self.reset_once and bdf not in self.loaded_speeds and self.options.load_seconds > 0:
                self.loaded_speeds[bdf] = summary.link_speed
                deficit = self._link_deficit(bdf, self.baselines[bdf], summary.link_speed)
                self.link_warnings[bdf] += deficit
                if deficit and self.journal is not None:
                    self.journal.note({"type": "link_warning", "bdf": str(bdf), "warnings": deficit})
            return asdict(summary)
        finding = Finding(summary.reason("load"), summary.detail())
        outcome = REFUSED if summary.tool_error else FAILED  # gpusoak's own failure is never the GPU's
        return CycleResult(outcome=outcome, duration_s=0.0, findings=(finding,), **{**base, "load": asdict(summary)})

    def _load_uuid(self, bdf: PciAddress) -> str | None:
        """What CUDA_VISIBLE_DEVICES names: the GPU's UUID, or on a MIG GPU its first MIG device's,
        read now (a recreated instance has a new UUID)."""
        uuid = self.baselines[bdf].uuid
        if uuid and (saved := self.mig.get(bdf)) is not None and saved.enabled:
            return mig.mig_uuid(self.node, uuid, self.ctx)
        return uuid

    def post_check(self, bdf: PciAddress) -> tuple[dict | None, Finding | None, bool]:
        """(summary, what was wrong, whether that was gpusoak's own failure rather than the GPU's)."""
        if self.options.post_check_seconds <= 0:
            return None, None, False
        if bdf in self.no_load:
            # The post-check was asked for and cannot run: whether the GPU computes again was not
            # looked at, so the cycle is inconclusive (--post-check-seconds 0 accepts sysfs alone).
            return None, Finding(NO_POST_CHECK, self.no_load[bdf]), True
        summary = run_load(self.node, bdf, self.options.post_check_seconds, min(self.options.load_fraction, 0.5),
                           self._load_uuid(bdf))
        if summary.ok:
            return asdict(summary), None, False
        return asdict(summary), Finding(summary.reason("post_check"), summary.detail()), summary.tool_error

    def _node_cycle(self, action_name: str, cycle: int) -> list[CycleResult]:
        action = ACTIONS[action_name]
        bases = {bdf: self._base(bdf, action_name, cycle) for bdf in self.gpus}
        out: dict[PciAddress, CycleResult] = {}
        for bdf in self.gpus:
            if (skip := self._not_now(bdf, bases[bdf])) is not None:
                out[bdf] = skip
        live = [b for b in self.gpus if b not in out]
        if not live:  # nothing may be touched (not authorised, or every GPU out): do nothing
            return [out[b] for b in self.gpus]

        def refuse_the_rest(findings: list[Finding]) -> list[CycleResult]:
            return [out.get(b) or CycleResult(outcome=REFUSED, duration_s=0.0, findings=tuple(findings), **bases[b])
                    for b in self.gpus]

        mig_refusals = [f for b in live for f in mig.refusals(self.mig.get(b), self.options.allow_mig)]
        if refusals := self._self_held() or mig_refusals or action.refusals(self.node, None, self.ctx):
            return refuse_the_rest(refusals)
        for b in list(live):
            loaded = self._load(b, bases[b])
            if (charged := self._close_window(b, loaded)) is not None:
                out[b] = charged
                live.remove(b)
            elif isinstance(loaded, CycleResult):
                out[b] = loaded
                live.remove(b)
            else:
                bases[b]["load"] = loaded
        if not live:
            return [out[b] for b in self.gpus]
        # Again: the loads ran since, and a holder may have come during them.
        if held := self._self_held() or holder_refusals(self.node, None, self.ctx):
            return refuse_the_rest(held)
        cursor = self.node.kmsg.cursor()
        start = self.node.clock.monotonic()
        error = None
        self.node.kmsg.mark(kmsg.cycle_marker(cycle, action_name, "node", "begin"))
        self.reset_once.update(live)
        try:
            try:
                action.perform(self.node, None, self.ctx)
            except Hung as err:
                for b in live:
                    self._take_out(b, OUT_OF_SERVICE, f"{action_name} hung in cycle {cycle}: {err}")
                    out[b] = CycleResult(outcome=HUNG, duration_s=self.options.command_timeout_s,
                                         findings=(Finding("hung", str(err)),), **bases[b])
                return [out[b] for b in self.gpus]
            except GpusoakError as err:
                error = err
            # The GPUs settle together, not one window after another: the first is read through its
            # window; a later one's window ends when the first one's judgement did (by then it has
            # had at least the window since the action; it is read at its first good poll, and its
            # kernel log covers all of it).
            settle_until = None
            for b in live:
                self.hold_d0(b)
                out[b] = self._opened(b, self._judge(b, bases[b], cursor, start, error, settle_until), cursor)
                settle_until = self.node.clock.monotonic() if settle_until is None else settle_until
            return [out[b] for b in self.gpus]
        finally:
            self.node.kmsg.mark(kmsg.cycle_marker(cycle, action_name, "node", "end"))

    def _judge(self, bdf: PciAddress, base: dict, cursor: int, start: float,
               error: GpusoakError | None, settle_until: float | None = None) -> CycleResult:
        """Verify recovery after the action; a failure climbs the recovery ladder.

        XIDs come from the kernel log alone: NVML's event API needs an event set registered on the
        GPU across the action, and that registration is an attachment that holds /dev/nvidiaN open
        through the reset (the driver prints every XID to the kernel log: nv_report_error)."""
        poll = verify.await_recovery(self.node, bdf, self.baselines[bdf], cursor, self.options.recovery_deadline_s,
                                     self.options.settle_s, settle_until)
        gate_checks = self._gate_checks(bdf) + self._mig_checks(bdf) if poll.recovered else ()
        events = poll.events
        recovery_s = (poll.first_good_s if poll.first_good_s is not None else poll.at_s) - start
        post, wrong, tool = self.post_check(bdf) if poll.recovered and error is None else (None, None, False)
        if poll.recovered and error is None:
            # The idle poll's link_speed is a SKIP; the judgement is the post-check's, under load.
            gate_checks = (*gate_checks, self._loaded_speed(bdf, post))
        checks = tuple(c for c in poll.checks if not (c.name == "link_speed" and poll.recovered and error is None)) \
            + gate_checks
        snap = poll.snapshot
        base = {**base, "post_check": post, "minor": snap.minor if snap else None,
                "nvml_index": snap.nvml_index if snap else None}
        identity = tuple(verify.identity_findings(self.baselines[bdf], snap))
        parallel = self.parallel
        if parallel and identity:
            # Other GPUs' cycles run meanwhile: one unbound now shifts the index, and GPUs bound
            # back in another order take each other's minors. True of the node, but gpusoak's doing.
            identity = tuple(Finding(f.reason, f.detail + "; a parallel run: other GPUs' cycles may have "
                                     "caused it") for f in identity)
        elif identity and (gone := self._drivers_gpus_changed()):
            # NVML numbers only the GPUs nvidia drives: one that left (failed, out of the run) moves
            # every index above it. True of the node, but that GPU's doing, not this one's.
            parallel = True
            identity = tuple(Finding(f.reason, f.detail + f"; nvidia no longer drives {gone}, which moves "
                                     "the GPUs after it") for f in identity)
        duration = self.node.clock.monotonic() - start
        gates_ok = all(c.status != verify.FAIL for c in gate_checks)
        if identity and self.options.identity_strict and not parallel:
            gates_ok = False  # the scheduler's configuration names the old minor or index
        if poll.recovered and error is None and wrong is None and gates_ok and not any(
                c.status == verify.BLIND for c in checks):
            return CycleResult(outcome=RECOVERED, duration_s=duration, recovery_s=recovery_s, findings=identity,
                               checks=checks, events=events, **base)
        blind = [c for c in checks if c.status == verify.BLIND]
        if poll.recovered and error is None and gates_ok and (blind or (wrong is not None and tool)):
            # A check that could not look (NVML, or gpusoak's own post-check child broke) has not
            # passed: the cycle is inconclusive, neither recovered nor failed.
            findings = tuple(Finding(CANNOT_LOOK, f"{c.name}: {c.detail}") for c in blind) + \
                ((wrong,) if wrong is not None and tool else ()) + identity
            return CycleResult(outcome=INCONCLUSIVE, duration_s=duration, findings=findings, checks=checks,
                               events=events, **base)
        findings = tuple(_findings(poll, error, gate_checks, ([wrong] if wrong else []) + list(identity)))
        rungs, recovered_by = (), None
        if self.options.ladder and not poll.recovered:  # the ladder is for a GPU that did not come back
            rungs, recovered_by, post = ladder.climb(self, bdf)
            base["post_check"] = post  # the load check after the rung that brought it back
            if recovered_by == ladder.REBOOT_REQUIRED:
                self._take_out(bdf, ladder.REBOOT_REQUIRED, f"nothing brought it back after cycle {base['cycle']}")
        return CycleResult(outcome=FAILED, duration_s=duration, findings=findings, checks=checks, events=events,
                           ladder=rungs, recovered_by=recovered_by, **base)

    def _nvidia_driven(self) -> set[PciAddress]:
        """The node's NVIDIA GPUs bound to nvidia: the ones NVML numbers."""
        return {g for g in self.node.sysfs.nvidia_gpus() if self.node.sysfs.function(g).driver == "nvidia"}

    def _drivers_gpus_changed(self) -> str:
        """The NVIDIA GPUs nvidia drove at the baseline and no longer does, named ("" if none)."""
        return ", ".join(str(g) for g in sorted(self._nvidia_at_start - self._nvidia_driven()))

    def _mig_checks(self, bdf: PciAddress) -> tuple[Check, ...]:
        """The saved MIG layout recreated and read back (gpusoak/mig.py): before the post-check,
        which runs on a MIG device."""
        saved = self.mig.get(bdf)
        return (mig.recreate(self.node, saved, self.ctx),) if saved is not None and saved.enabled else ()

    def _loaded_speed(self, bdf: PciAddress, post: dict | None) -> Check:
        """link_speed under load: the post-check's reading against the first cycle's load's."""
        ran = post is not None and post.get("exit") == 0 and post.get("refusal") is None
        if post is not None and not ran:
            return Check("link_speed", verify.SKIP, "not compared: the post-check did not run to the end")
        return verify.loaded_speed_check(self.loaded_speeds.get(bdf), post and post.get("link_speed"),
                                         post_check=ran, error=post and post.get("link_error"))

    def _gate_checks(self, bdf: PciAddress) -> tuple[Check, ...]:
        """The health gate after a cycle: static limits, and rates since the soak began."""
        results = health_gates.evaluate(self.reading(bdf), self.readings.get(bdf), self.options.gates)
        status = {health_gates.FAIL: verify.FAIL, health_gates.SKIP: verify.SKIP}
        return tuple(Check(f"gate_{g.name}", status.get(g.status, verify.PASS),
                           f"warning: {g.detail}" if g.status == health_gates.WARN else g.detail) for g in results)

    def header(self) -> dict:
        node = self.node
        return {
            "run_id": self.run_id,
            "started_at": _now_iso(),
            "backend": node.backend,
            "hostname": node.hostname,
            "node_name": self.node_name or node.hostname,
            "kernel": node.kernel,
            "driver": node.driver_version(),
            "nvml": "available" if node.nvml is not None else f"unavailable: {node.nvml_unavailable}",
            "options": asdict(self.options),
            "actions_semantics": dict(ACTION_SEMANTICS),  # what each action name means (result.json 1.2)
            "profile": self.profile,
            "carried": self.carried,  # what each sequential test started from (gpusoak/carry.py)
            "mig": {str(b): m.to_dict() for b, m in self.mig.items()},  # before any reset (gpusoak/mig.py)
            "inventory": {"found": [str(b) for b in self.found], "previous": self.previous_inventory},
            "gpus": [{"bdf": str(b), "uuid": self.baselines[b].uuid,
                      "baseline": asdict(self.baselines[b]),
                      "out_of_service": self.out_of_service.get(b),
                      "warnings": [*self.link_warnings.get(b, []), *([self.no_load[b]] if b in self.no_load else [])],
                      "health_gate": [asdict(g) for g in self.gate_results.get(b, [])]} for b in self.gpus],
        }


def _findings(poll: verify.Poll, error: GpusoakError | None, gate_checks: tuple[Check, ...],
              extra: list[Finding]) -> list[Finding]:
    """Named reasons, most specific first: fatal kernel events, the action's error, failed checks,
    failed gates, then ``extra`` (a wrong post-check). One finding per reason."""
    out = [Finding(verify.event_reason(e), e.text) for e in poll.fatal]
    if error is not None:
        out.append(Finding(error.reason or RESET_WRITE_FAILED, str(error)))
        out += release.bind_back_findings(error)  # a reset that failed and then could not bind back
    out += [Finding(c.name, c.detail) for c in (*poll.checks, *gate_checks) if c.status == verify.FAIL]
    if not poll.fatal and poll.unsettled:
        out.append(Finding(UNSETTLED, f"every check passed, then failed again {poll.at_s - poll.first_good_s:.1f} s "
                                      "later, inside the settle window"))
    elif not poll.fatal and not poll.recovered:
        out.append(Finding(RECOVERY_TIMEOUT, "checks still failing at the deadline"))
    out += extra
    seen: set[str] = set()
    unique = [f for f in out if not (f.reason in seen or seen.add(f.reason))]
    return unique or [Finding(FAILED, "did not recover")]
