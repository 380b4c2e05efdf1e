"""The node's state before a destructive run, saved and put back afterwards (also after a failure).

Saved: each GPU function's driver binding, driver_override and runtime-PM setting; each GPU's
persistence mode; which NVIDIA modules are loaded; which GPU services are active. ``gpusoak
restore STATE`` re-applies a saved state after a crash.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpusoak.actions.base import (
    GPU_SERVICES,
    Context,
    check,
    driver_path,
    service_active,
    slot_functions,
    write,
)
from gpusoak.actions.module_reload import ModuleReload
from gpusoak.errors import GpusoakError, UsageError
from gpusoak.files import write_atomically
from gpusoak.host.node import Node
from gpusoak.host.sysfs import DRIVER_OVERRIDE
from gpusoak.model import PciAddress

STATE_SCHEMA = "gpusoak.state/1"


@dataclass(frozen=True)
class FunctionState:
    bdf: str
    driver: str | None
    driver_override: str | None
    runtime_pm: str | None
    upstream_port: str | None = None  # where a rescan brings the function back (its port's bus)


@dataclass(frozen=True)
class NodeState:
    hostname: str
    backend: str
    functions: list[FunctionState] = field(default_factory=list)
    persistence: dict[str, bool | None] = field(default_factory=dict)  # graphics bdf -> mode
    modules: list[str] = field(default_factory=list)
    services: dict[str, bool] = field(default_factory=dict)  # unit -> was active

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
    functions, persistence = [], {}
    for bdf in gpus:
        for f in slot_functions(node, bdf) if node.sysfs.function(bdf).present else []:
            fn = node.sysfs.function(f)
            port = fn.upstream_port
            functions.append(FunctionState(str(f), fn.driver, fn.driver_override, fn.runtime_pm,
                                           None if port is None else str(port)))
        persistence[str(bdf)] = _persistence(node, bdf)
    return NodeState(
        hostname=node.hostname, backend=node.backend, functions=functions, persistence=persistence,
        modules=ModuleReload().loaded(node, ctx),
        services={u: service_active(node, u, ctx) for u in GPU_SERVICES})


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


def restore(node: Node, state: NodeState, ctx: Context, only: set[str] | None = None) -> list[str]:
    """Put the node back as saved. Returns what was changed; errors are collected, not raised, so one
    stubborn device does not stop the others from being restored."""
    done: list[str] = []
    errors: list[str] = []

    def attempt(what: str, fn) -> None:
        try:
            fn()
            done.append(what)
        except GpusoakError as err:
            errors.append(f"{what}: {err}")

    if only is None:
        for m in reversed([m for m in state.modules if not (node.sysfs.root / "module" / m).is_dir()]):
            attempt(f"modprobe {m}", lambda m=m: _ok(node.runner.run(["modprobe", m], timeout_s=ctx.command_timeout_s)))
    wanted = [f for f in state.functions if only is None or f.bdf in only]
    for rescan in _rescans_for_missing(node, wanted):
        attempt(f"rescan {rescan.parent.name} below {rescan.parents[2].name}",
                lambda r=rescan: write(node, r, "1", ctx, "rescanning the port's bus"))
    for f in wanted:
        bdf = PciAddress.parse(f.bdf)
        fn = node.sysfs.function(bdf)
        if not fn.present:
            errors.append(f"{f.bdf}: not present (a rescan of its port's bus did not bring it back, or "
                          "no port was saved; a reboot may)")
            continue
        if fn.driver_override != f.driver_override:
            attempt(f"driver_override of {f.bdf} -> {f.driver_override or '(none)'}",
                    lambda fn=fn, f=f: write(node, fn.path / DRIVER_OVERRIDE, f.driver_override or "\n", ctx,
                                             "restoring driver_override"))
        current = fn.driver
        if current != f.driver:
            if current is not None:
                attempt(f"unbind {f.bdf} from {current}",
                        lambda current=current, f=f: write(node, driver_path(node, current, "unbind"), f.bdf, ctx,
                                                           "unbind"))
            if f.driver is not None:
                attempt(f"bind {f.bdf} to {f.driver}",
                        lambda f=f: write(node, driver_path(node, f.driver, "bind"), f.bdf, ctx, "bind"))
        if f.runtime_pm is not None and fn.present and fn.runtime_pm != f.runtime_pm:
            attempt(f"power/control of {f.bdf} -> {f.runtime_pm}",
                    lambda fn=fn, f=f: write(node, fn.path / "power" / "control", f.runtime_pm, ctx,
                                             "restoring runtime PM"))
    for bdf_text, mode in state.persistence.items():
        if (only is not None and bdf_text not in only) or mode is None:
            continue
        now = _persistence(node, PciAddress.parse(bdf_text))
        if now is not None and now != mode:
            attempt(f"persistence mode of {bdf_text} -> {int(mode)}", lambda b=bdf_text, m=mode: _ok(node.runner.run(
                ["nvidia-smi", "-i", PciAddress.parse(b).nvml_bus_id, "-pm", str(int(m))], timeout_s=ctx.command_timeout_s)))
    if only is None:
        for unit, was_active in state.services.items():
            if was_active and not service_active(node, unit, ctx):
                attempt(f"systemctl start {unit}", lambda u=unit: _ok(node.runner.run(
                    ["systemctl", "start", u], timeout_s=ctx.command_timeout_s)))
    return done + [f"FAILED {e}" for e in errors]


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
