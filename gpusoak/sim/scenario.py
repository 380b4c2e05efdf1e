"""Scenario files (TOML) describing a simulated node: its GPUs, topology and fault profiles.

Each GPU may carry ``expect``, the class the verdict must give it: the simulator knows the ground
truth, so tests (and users evaluating gpusoak) can check the verdict against it.

Processes that hold device nodes::

    [nodes]                 # extra device nodes, as a container names them
    "/dev/gpu0" = "nvidia0"     # the number of a node the simulated node has (here 195:0)
    "/dev/nvidia-caps/nvidia-cap12" = "509:12"   # or a major:minor
    [holders]               # pid -> the node it holds open ("/dev/..." is the simulated /dev)
    4242 = "/dev/gpu0"
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpusoak.errors import GpusoakError, ScenarioError
from gpusoak.model import PciAddress, link_gts
from gpusoak.sim.driver_reset import ARCHS
from gpusoak.sim.profiles import PROFILES, FaultProfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SCENARIO = "h100-8gpu"
DEFAULT_SERVICES = {"nvidia-persistenced": "active", "nvidia-fabricmanager": "inactive", "nvidia-dcgm": "inactive"}
FUNCTION_KINDS = ("audio", "usb")
# What nvidia-smi --query-gpu prints (csv, nounits) for the settings a driver re-initialises, on a
# GPU the driver has just probed: the defaults a reset or rebind puts back. Illustrative H100 SXM
# values [U]; "[N/A]" or "[Not Supported]" models a GPU that lacks the setting.
SETTINGS_DEFAULTS = {"compute_mode": "Default", "power.limit": "700.00", "clocks.applications.graphics": "1980",
                     "clocks.applications.memory": "2619", "accounting.mode": "Disabled"}


@dataclass(frozen=True)
class GpuSpec:
    bdf: PciAddress
    model: str
    device_id: int
    memory_bytes: int
    link_speed: str
    link_width: int
    upstream: tuple[PciAddress, ...]  # bridge chain from the root bus down to the GPU's port
    profile: FaultProfile
    uuid: str
    serial: str
    numa_node: int
    expect: str | None = None  # the class the verdict must give this GPU
    expect_reliability: str | None = None  # the reliability class a profile's run must give it
    health: dict[str, Any] = field(default_factory=dict)  # NVML readings to start from (see sim.nvml.HEALTH)
    functions: tuple[str, ...] = ()  # extra functions beside graphics: "audio", "usb"
    arch: str = "hopper"  # NVML architecture (sim.driver_reset.ARCHS): decides GSP or not
    display: bool = False  # boot VGA with a connected display (a console is on it)
    # NVML device function -> the pynvml error it raises on this GPU, e.g.
    # {nvmlDeviceGetPowerUsage = "NoPermission"}; "LibraryMismatch" for an older driver's NVML
    nvml_errors: dict[str, str] = field(default_factory=dict)
    nvlink_peers: tuple[PciAddress, ...] = ()  # GPUs this one is NVLink-connected to directly (link i: peer i)
    fabric: str = "completes"  # on an NVSwitch node: "never" keeps its registration IN_PROGRESS (sim.fabric)
    settings: dict[str, str] = field(default_factory=lambda: dict(SETTINGS_DEFAULTS))  # nvidia-smi defaults
    # MIG (sim.mig): {mode = "Enabled", pending = "Disabled", layout = [19, 14], create_fails = false};
    # layout: GPU instance profile ids, each with its full compute instance. Empty: no MIG ([N/A]).
    mig: dict[str, Any] = field(default_factory=dict)
    minor: int | None = None  # /dev/nvidia<minor> at boot (None: the next free one in scenario order)
    # Runtime PM at boot: power/control "on" (the PCI core's default) or "auto" (a udev rule, or
    # vfio-pci's own pm_runtime_allow). With "auto" an idle GPU drops to D3hot under vfio-pci, or to
    # D3cold under nvidia where the driver's runtime D3 (RTD3) is on (`rtd3`).
    power_control: str = "on"
    rtd3: bool = False
    vfio: bool = False  # bound to vfio-pci at boot (driver_override), as a passthrough host leaves it
    # The link below the GPU's capability before any reset: a BIOS-capped generation
    # (port_link_speed = "16.0 GT/s PCIe": the port's Target Link Speed, LNKCTL2, set lower while its
    # max_link_speed, from LNKCAP, stays) or an x8-wired slot (port_link_width = 8: both ends are x16
    # capable, and the link trains at the lanes wired). A port whose capability itself is lower
    # (a Gen4 port for a Gen5 GPU) is port_max_link_speed / port_max_link_width: its max_link_* say so.
    # The link trains at the least of them all (PCIe Base Specification, link training: the highest
    # rate and width both ends support and the lanes connect) [I: the LNKCTL2 reading of a BIOS cap].
    port_link_speed: str | None = None
    port_link_width: int | None = None
    port_max_link_speed: str | None = None
    port_max_link_width: int | None = None

    @property
    def port_speed(self) -> str:
        return self.port_max_link_speed or self.link_speed

    @property
    def port_width(self) -> int:
        return self.port_max_link_width or self.link_width

    @property
    def trained_speed(self) -> str:
        caps = [s for s in (self.link_speed, self.port_speed, self.port_link_speed) if s]
        return min(caps, key=lambda s: link_gts(s) or 0.0)

    @property
    def trained_width(self) -> int:
        return min(w for w in (self.link_width, self.port_width, self.port_link_width) if w)


@dataclass(frozen=True)
class Scenario:
    name: str
    hostname: str
    kernel: str
    driver: str
    seed: int
    time_scale: float
    gpus: tuple[GpuSpec, ...]
    description: str = ""
    holders: dict[int, str] = field(default_factory=dict)  # pid -> device node it holds open
    nodes: dict[str, str] = field(default_factory=dict)  # extra node path -> a node's name or "major:minor"
    services: dict[str, str] = field(default_factory=dict)  # systemd unit -> active / inactive
    modules: tuple[str, ...] = ("nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_drm")  # loaded at start
    # The nvidia version installed under /lib/modules (None: the running driver's). A different one
    # is a driver upgraded on disk but not yet loaded: the next modprobe loads it.
    driver_on_disk: str | None = None
    lib_modules: bool = True  # False: no /lib/modules/<release> (a container without the host's)
    devkmsg: str = "ratelimit"  # the printk.devkmsg setting: ratelimit (the default), on, off
    nvswitches: int = 0  # NVSwitch functions on the node (Fabric Manager matters on Ampere)
    actions: tuple[str, ...] = ("flr",)  # the actions the scenario's expected classes assume
    # The load before each cycle and the post-check after it: a real node's (gpusoak/host/node.py,
    # 20 s and 5 s) unless the scenario says otherwise (0: none).
    load_seconds: float | None = None
    post_check_seconds: float | None = None
    expect_decision: dict[str, str] = field(default_factory=dict)  # profile -> the node decision it must give


def bundled() -> list[str]:
    """Bundled scenario names; a folder of them (a fleet) names its nodes folder/node."""
    folder = resources.files("gpusoak.sim") / "scenarios"
    names = []
    for p in folder.iterdir():
        if p.name.endswith(".toml"):
            names.append(p.name[:-5])
        elif p.is_dir():
            names += [f"{p.name}/{q.name[:-5]}" for q in p.iterdir() if q.name.endswith(".toml")]
    return sorted(names)


def fleet(name: str) -> list[str]:
    """The node scenarios of a bundled fleet folder (e.g. mixed-fleet)."""
    return [n for n in bundled() if n.startswith(name + "/")]


def load(name_or_path: str | None) -> Scenario:
    """A bundled scenario by name, or a TOML file by path."""
    name_or_path = name_or_path or DEFAULT_SCENARIO
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text()
        except OSError as err:
            raise ScenarioError(f"cannot read scenario: {err.strerror}", path=str(path)) from err
    else:
        parts = name_or_path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ScenarioError(f"no scenario {name_or_path!r}; bundled: {', '.join(bundled())}")
        res = resources.files("gpusoak.sim") / "scenarios"
        for part in parts[:-1]:
            res = res / part
        res = res / f"{parts[-1]}.toml"
        if not res.is_file():
            raise ScenarioError(f"no scenario {name_or_path!r}; bundled: {', '.join(bundled())}")
        text = res.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"invalid TOML: {err}", path=str(name_or_path)) from err
    return parse(data, default_name=path.stem)


def parse(data: dict[str, Any], default_name: str = "scenario") -> Scenario:
    defaults = data.get("defaults", {})
    raw_gpus = data.get("gpu", [])
    if not raw_gpus:
        raise ScenarioError("scenario has no [[gpu]] entries")
    gpus = []
    for index, raw in enumerate(raw_gpus):
        spec = {**defaults, **raw}
        try:
            gpus.append(_gpu(spec, index))
        except GpusoakError as err:
            raise ScenarioError(f"gpu #{index + 1}: {err}") from err
        except (KeyError, TypeError, ValueError) as err:
            raise ScenarioError(f"gpu #{index + 1}: bad or missing field: {err}") from err
    seen = [g.bdf for g in gpus]
    if len(set(seen)) != len(seen):
        raise ScenarioError("two GPUs share one PCI address")
    holders = {int(pid): str(dev) for pid, dev in data.get("holders", {}).items()}
    return Scenario(
        expect_decision={str(k): str(v) for k, v in data.get("expect_decision", {}).items()},
        name=str(data.get("name", default_name)),
        description=str(data.get("description", "")),
        hostname=str(data.get("hostname", "sim-node")),
        kernel=str(data.get("kernel", "6.8.0-sim")),
        driver=str(data.get("driver", "570.124.06")),
        seed=int(data.get("seed", 0)),
        time_scale=float(data.get("time_scale", 0.0)),
        gpus=tuple(gpus),
        holders=holders,
        nodes={str(k): str(v) for k, v in data.get("nodes", {}).items()},
        services={str(k): str(v) for k, v in data.get("services", DEFAULT_SERVICES).items()},
        modules=tuple(data.get("modules", ("nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_drm"))),
        driver_on_disk=None if data.get("driver_on_disk") is None else str(data["driver_on_disk"]),
        lib_modules=bool(data.get("lib_modules", True)),
        devkmsg=_choice(data.get("devkmsg", "ratelimit"), ("ratelimit", "on", "off"), "devkmsg"),
        nvswitches=int(data.get("nvswitches", 0)),
        actions=tuple(data.get("actions", ("flr",))),
        load_seconds=_seconds(data, "load_seconds"),
        post_check_seconds=_seconds(data, "post_check_seconds"),
    )


def _seconds(data: dict[str, Any], key: str) -> float | None:
    if data.get(key) is None:
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 86400:
        raise ScenarioError(f"{key} must be a number of seconds from 0 (none) to a day, not {value!r}")
    return float(value)


def _gpu(spec: dict[str, Any], index: int) -> GpuSpec:
    bdf = PciAddress.parse(spec["bdf"])
    upstream = tuple(PciAddress.parse(a) for a in spec.get("upstream", ()))
    if bdf.function != 0:
        raise ScenarioError("a GPU's graphics function is function 0; list others in `functions`")
    if not upstream and bdf.bus > 0:
        # One root port per GPU by default: its own reset domain.
        upstream = (PciAddress(bdf.domain, bdf.bus - 1, 1, 0),)
    arch = str(spec.get("arch", "hopper"))
    if arch not in ARCHS:
        raise ScenarioError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    profile_name = spec.get("profile", "healthy")
    if profile_name not in PROFILES:
        raise ScenarioError(f"unknown fault profile {profile_name!r}; known: {', '.join(sorted(PROFILES))}")
    params = {k: v for k, v in spec.items() if k in PROFILES[profile_name].PARAMS}
    profile = PROFILES[profile_name](**params)
    return GpuSpec(
        bdf=bdf,
        model=str(spec.get("model", "NVIDIA H100 80GB HBM3")),
        device_id=int(str(spec.get("device_id", "0x2330")), 16),
        memory_bytes=int(float(spec.get("memory_gib", 80)) * 2**30),
        link_speed=str(spec.get("link_speed", "32.0 GT/s PCIe")),
        link_width=int(spec.get("link_width", 16)),
        upstream=upstream,
        profile=profile,
        uuid=str(spec.get("uuid", f"GPU-5a1f00d{index:01x}-{bdf.bus:04x}-4c3b-9e2a-0c0ffee{index:05x}")),
        serial=str(spec.get("serial", f"165022000{index:04d}")),
        numa_node=int(spec.get("numa_node", 0 if bdf.bus < 0x80 else 1)),
        expect=spec.get("expect"),
        expect_reliability=spec.get("expect_reliability"),
        health=_health(spec.get("health", {})),
        functions=_functions(spec.get("functions", ())),
        arch=arch,
        display=bool(spec.get("display", False)),
        nvml_errors={str(k): str(v) for k, v in spec.get("nvml_errors", {}).items()},
        settings=_settings(spec.get("settings", {})),
        mig=dict(spec.get("mig", {})),
        minor=None if spec.get("minor") is None else int(spec["minor"]),
        power_control=_choice(spec.get("power_control", "on"), ("on", "auto"), "power_control"),
        rtd3=bool(spec.get("rtd3", False)),
        vfio=bool(spec.get("vfio", False)),
        fabric=_choice(spec.get("fabric", "completes"), ("completes", "never"), "fabric"),
        nvlink_peers=tuple(PciAddress.parse(a) for a in spec.get("nvlink_peers", ())),
        port_link_speed=str(spec["port_link_speed"]) if "port_link_speed" in spec else None,
        port_link_width=int(spec["port_link_width"]) if "port_link_width" in spec else None,
        port_max_link_speed=str(spec["port_max_link_speed"]) if "port_max_link_speed" in spec else None,
        port_max_link_width=int(spec["port_max_link_width"]) if "port_max_link_width" in spec else None,
    )


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ScenarioError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _settings(raw: dict[str, Any]) -> dict[str, str]:
    unknown = sorted(set(raw) - set(SETTINGS_DEFAULTS))
    if unknown:
        raise ScenarioError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS_DEFAULTS)}")
    return {**SETTINGS_DEFAULTS, **{k: str(v) for k, v in raw.items()}}


def _functions(raw) -> tuple[str, ...]:
    bad = [f for f in raw if f not in FUNCTION_KINDS]
    if bad:
        raise ScenarioError(f"unknown function kind(s) {', '.join(map(str, bad))}; known: {', '.join(FUNCTION_KINDS)}")
    return tuple(raw)


def _health(raw: dict[str, Any]) -> dict[str, Any]:
    from gpusoak.sim.nvml import HEALTH

    unknown = sorted(set(raw) - set(HEALTH))
    if unknown:
        raise ScenarioError(f"unknown health field(s) {', '.join(unknown)}; known: {', '.join(sorted(HEALTH))}")
    return {**HEALTH, **raw}
