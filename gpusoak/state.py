"""The node's state before a destructive run, saved and put back afterwards (also after a failure).

Saved: each GPU function's driver binding, driver_override, runtime-PM setting, reset_method and
upstream port (whose bus a rescan brings it back by); each GPU's settings that a reset or rebind
wipes (compute mode, power limit, application clocks, accounting and persistence mode, read with
nvidia-smi: gpusoak.gpu_settings); which NVIDIA modules are loaded; which GPU services are active,
and which of them the run stopped (written before each stop, so a crash between the stop and the
end still has them started again). ``gpusoak restore STATE`` re-applies a saved state after a crash.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpusoak import gpu_settings, mig
from gpusoak.actions import services
from gpusoak.actions.base import (
    Context,
    check,
    driver_path,
    slot_functions,
    write,
)
from gpusoak.actions.module_reload import ModuleReload
from gpusoak.errors import GpusoakError, UsageError
from gpusoak.files import write_atomically
from gpusoak.host.node import Node
from gpusoak.host.sysfs import DRIVER_OVERRIDE, NVIDIA_VENDOR, RESET_METHOD
from gpusoak.model import PciAddress

STATE_SCHEMA = "gpusoak.state/1"


@dataclass(frozen=True)
class FunctionState:
    bdf: str
    driver: str | None
    driver_override: str | None
    runtime_pm: str | None
    upstream_port: str | None = None  # where a rescan brings the function back (its port's bus)
    reset_method: str | None = None  # the enabled methods, in order; None where the kernel has no file


@dataclass(frozen=True)
class NodeState:
    hostname: str
    backend: str
    functions: list[FunctionState] = field(default_factory=list)
    persistence: dict[str, bool | None] = field(default_factory=dict)  # graphics bdf -> mode
    modules: list[str] = field(default_factory=list)
    services: dict[str, bool] = field(default_factory=dict)  # unit -> was active
    # graphics bdf -> GpuSettings.to_dict(): what nvidia-smi read before the first action, put back
    # after each cycle and at the end (gpusoak.gpu_settings)
    settings: dict[str, dict] = field(default_factory=dict)
    stopped_services: list[str] = field(default_factory=list)  # units this run stopped, in order
    # graphics bdf -> mig.MigState.to_dict(): MIG mode and instance layout, recreated after each
    # cycle and at the end (gpusoak.mig)
    mig: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"schema": STATE_SCHEMA, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NodeState:
        data = json.loads(text)
        if data.pop("schema", None) != STATE_SCHEMA:
            raise UsageError("not a gpusoak state file")
        data["functions"] = [FunctionState(**f) for f in data.get("functions", [])]
        return cls(**data)


def capture(node: Node, gpus: list[PciAddress], ctx: Context) -> NodeState:
    functions, persistence, settings, migs = [], {}, {}, {}
    for bdf in gpus:
        for f in slot_functions(node, bdf) if node.sysfs.function(bdf).present else []:
            fn = node.sysfs.function(f)
            port, methods = fn.upstream_port, fn.reset_methods
            functions.append(FunctionState(str(f), fn.driver, fn.driver_override, fn.runtime_pm,
                                           None if port is None else str(port),
                                           None if methods is None else " ".join(methods)))
        if node.sysfs.function(bdf).vendor == NVIDIA_VENDOR:
            saved = gpu_settings.read(node, bdf, ctx)
            settings[str(bdf)] = saved.to_dict()
            persistence[str(bdf)] = saved.persistence_mode
            # MIG instances are the nvidia driver's: a GPU another driver holds (vfio-pci) has none to lose.
            bound = node.sysfs.function(bdf).driver == "nvidia"
            migs[str(bdf)] = (mig.read(node, bdf, ctx) if bound else mig.MigState(str(bdf))).to_dict()
    return NodeState(
        hostname=node.hostname, backend=node.backend, functions=functions, persistence=persistence,
        settings=settings, mig=migs,
        modules=ModuleReload().loaded(node, ctx),
        services=dict.fromkeys(services.ALL, False) | dict.fromkeys(
            services.active(node, services.ALL, ctx.command_timeout_s), True))


def _persistence(node: Node, bdf: PciAddress) -> bool | None:
    if node.nvml is None:
        return None
    h = node.nvml.health(bdf)
    return h.values.get("persistence_mode") if h.status == "ok" else None


def save(state: NodeState, path: Path) -> None:
    write_atomically(path, state.to_json(), "the node's state")


def load(path: Path) -> NodeState:
    try:
        return NodeState.from_json(path.read_text())
    except OSError as err:
        raise UsageError(f"cannot read state file: {err.strerror}", path=str(path)) from err
    except (ValueError, TypeError) as err:
        raise UsageError(f"not a gpusoak state file: {err}", path=str(path)) from err


# How long restore waits for a write still blocked in the kernel (it has already had its own
# deadline) before it leaves that function alone and says so.
RESTORE_WAIT_S = 10.0


class _Log:
    """What restore changed, and what it could not (each with why)."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.errors: list[str] = []

    def attempt(self, what: str, fn) -> None:
        try:
            fn()
            self.done.append(what)
        except GpusoakError as err:
            self.errors.append(f"{what}: {err}")

    def result(self) -> list[str]:
        return self.done + [f"FAILED {e}" for e in self.errors]


def restore(node: Node, state: NodeState, ctx: Context, only: set[str] | None = None,
            wait_s: float = RESTORE_WAIT_S) -> list[str]:
    """Put the node back as saved. Returns what was changed; errors are collected, not raised, so one
    stubborn device does not stop the others from being restored. A function with a write still
    blocked in the kernel (a hung reset, unbind or remove) is waited for up to ``wait_s``, then left
    alone with the reason: writing to it while that write is in flight would race it."""
    log = _Log()
    if only is None:
        for m in reversed([m for m in state.modules if not (node.sysfs.root / "module" / m).is_dir()]):
            log.attempt(f"modprobe {m}", lambda m=m: _ok(node.runner.run(["modprobe", m], timeout_s=ctx.command_timeout_s)))
    wanted = [f for f in state.functions if only is None or f.bdf in only]
    blocked = _still_blocked(node, wanted, wait_s, log)
    wanted = [f for f in wanted if f.bdf not in blocked]
    for rescan in _rescans_for_missing(node, wanted):
        log.attempt(f"rescan {rescan.parent.name} below {rescan.parents[2].name}",
                    lambda r=rescan: write(node, r, "1", ctx, "rescanning the port's bus"))
    for f in wanted:
        # Mid-run (the ladder puts one slot's bindings back) runtime PM stays off: the soak holds the
        # GPU in D0 until the end, when the saved power/control goes back.
        _restore_function(node, f, ctx, log, runtime_pm=only is None)
    if only is None:
        # Before the GPU settings and persistence mode: a started nvidia-persistenced sets
        # persistence back itself (a legacy `nvidia-smi -pm 1` under a stopped daemon would be the
        # deprecated mode instead).
        was_active = [u for u, on in state.services.items() if on]
        for unit in [*reversed(state.stopped_services), *(u for u in was_active if u not in state.stopped_services)]:
            if not services.active(node, (unit,), ctx.command_timeout_s):
                log.attempt(f"systemctl start {unit}", lambda u=unit: _ok(node.runner.run(
                    ["systemctl", "start", u], timeout_s=ctx.command_timeout_s)))
    for bdf_text, saved in state.settings.items():
        if (only is None or bdf_text in only) and bdf_text not in blocked:
            for change in gpu_settings.put_back(node, gpu_settings.GpuSettings.from_dict(saved), ctx):
                (log.done if change.status == gpu_settings.PUT_BACK else log.errors).append(str(change))
    for bdf_text, saved_mig in state.mig.items():
        saved_mig = mig.MigState.from_dict(saved_mig)
        if (only is None or bdf_text in only) and bdf_text not in blocked and saved_mig.enabled:
            check_ = mig.recreate(node, saved_mig, ctx)
            if check_.detail.startswith("recreated"):
                log.done.append(f"MIG layout of {bdf_text}: {check_.detail}")
            elif check_.status != "pass":
                log.errors.append(f"MIG layout of {bdf_text}: {check_.detail}")
    for bdf_text, mode in state.persistence.items():
        if (only is not None and bdf_text not in only) or mode is None or bdf_text in blocked \
                or bdf_text in state.settings:  # a state file from before settings were saved
            continue
        now = _persistence(node, PciAddress.parse(bdf_text))
        if now is not None and now != mode:
            log.attempt(f"persistence mode of {bdf_text} -> {int(mode)}", lambda b=bdf_text, m=mode: _ok(node.runner.run(
                ["nvidia-smi", "-i", PciAddress.parse(b).nvml_bus_id, "-pm", str(int(m))], timeout_s=ctx.command_timeout_s)))
    return log.result()


def _still_blocked(node: Node, functions: list[FunctionState], wait_s: float, log: _Log) -> set[str]:
    blocked: set[str] = set()
    for f in functions:
        left = node.sysfs.wait_for_writes(PciAddress.parse(f.bdf), wait_s)
        if left:
            blocked.add(f.bdf)
            what = "; ".join(f"{w.what} ({w.path.name} <- {w.data.strip()!r}, issued "
                             f"{time.monotonic() - w.started_s:.0f} s ago)" for w in left)
            log.errors.append(f"{f.bdf}: not restored: a write is still blocked in the kernel: {what}; "
                              "writing to the device now would race it")
    return blocked


def _restore_function(node: Node, f: FunctionState, ctx: Context, log: _Log, runtime_pm: bool = True) -> None:
    fn = node.sysfs.function(PciAddress.parse(f.bdf))
    if not fn.present:
        log.errors.append(f"{f.bdf}: not present (a rescan of its port's bus did not bring it back, or "
                          "no port was saved; a reboot may)")
        return
    if fn.driver_override != f.driver_override:
        log.attempt(f"driver_override of {f.bdf} -> {f.driver_override or '(none)'}",
                    lambda: write(node, fn.path / DRIVER_OVERRIDE, f.driver_override or "\n", ctx,
                                  "restoring driver_override"))
    current = fn.driver
    if current != f.driver:
        if current is not None:
            log.attempt(f"unbind {f.bdf} from {current}",
                        lambda: write(node, driver_path(node, current, "unbind"), f.bdf, ctx, "unbind"))
        if f.driver is not None:
            log.attempt(f"bind {f.bdf} to {f.driver}",
                        lambda: write(node, driver_path(node, f.driver, "bind"), f.bdf, ctx, "bind"))
    # After the bindings: binding vfio-pci allows runtime PM itself (vfio_pci_core_register_device:
    # pm_runtime_allow), unbinding it forbids it (vfio_pci_core_unregister_device).
    if runtime_pm and f.runtime_pm is not None and fn.present and fn.runtime_pm != f.runtime_pm:
        log.attempt(f"power/control of {f.bdf} -> {f.runtime_pm}",
                    lambda: write(node, fn.path / "power" / "control", f.runtime_pm, ctx, "restoring runtime PM"))
    now = fn.reset_methods
    if f.reset_method is not None and now is not None and " ".join(now) != f.reset_method:
        # flr and bus_reset narrow reset_method to the one method they test (reset_method, 5.15+).
        log.attempt(f"reset_method of {f.bdf} -> {f.reset_method or '(none)'}",
                    lambda: write(node, fn.path / RESET_METHOD, f.reset_method or "\n", ctx,
                                  "restoring reset_method"))


def _rescans_for_missing(node: Node, functions: list[FunctionState]) -> list[Path]:
    """One rescan per port whose saved functions are gone: the port's secondary bus only, never
    /sys/bus/pci/rescan, which would re-add devices an operator removed on purpose."""
    out: list[Path] = []
    for f in functions:
        bdf = PciAddress.parse(f.bdf)
        if f.upstream_port is None or node.sysfs.function(bdf).present:
            continue
        port = PciAddress.parse(f.upstream_port)
        path = node.sysfs.bus_rescan_file(port, bdf)
        if node.sysfs.function(port).present and path not in out:
            out.append(path)
    return out


def _ok(result) -> None:
    check(result, "restore")
