"""The GPU settings a rebind, a driver reload or a reset can wipe: read before the first action,
put back after each cycle and at the end.

Compute mode, power limit, application clocks, accounting mode and persistence mode are the
driver's per-GPU state, set with nvidia-smi: a driver that probes the GPU again (rebind, module
reload, remove and rescan) or a reset that re-initialises it starts from the defaults [I: the
driver re-initialises the GPU's RM state on probe and after a reset; persistence mode is
documented as not kept across a reboot, reference 2.2].

Everything goes through ``nvidia-smi`` on the node's runner, never NVML in the soak's own
process (an NVML attachment there would hold the very GPU being reset). Field names are those of
``nvidia-smi --help-query-gpu``; with ``--format=csv,noheader,nounits`` a value nvidia-smi cannot
give reads "[N/A]" or "[Not Supported]": that is NA, recorded with its text and never set back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gpusoak.actions.base import Context, run
from gpusoak.errors import GpusoakError
from gpusoak.host.node import Node
from gpusoak.model import PciAddress

# nvidia-smi --help-query-gpu names, in the order the query asks for them.
QUERY = ("pci.bus_id", "compute_mode", "power.limit", "clocks.applications.graphics",
         "clocks.applications.memory", "accounting.mode", "persistence_mode")
# Persistence first: on a GPU that is not persistent the driver tears its state down when the last
# client closes (kernel-open/nvidia/nv.c nv_close_device -> nv_stop_device -> nv_shutdown_adapter),
# so settings each nvidia-smi made before persistence was back on would be gone as it exits.
SETTINGS = {"persistence_mode": "persistence_mode", "compute_mode": "compute_mode", "power_limit_w": "power.limit",
            "app_clock_graphics_mhz": "clocks.applications.graphics",
            "app_clock_memory_mhz": "clocks.applications.memory",
            "accounting_mode": "accounting.mode"}
# -c takes "0/DEFAULT, 1/EXCLUSIVE_THREAD (deprecated), 2/PROHIBITED, 3/EXCLUSIVE_PROCESS"
# (nvidia-smi --help); the query prints the names below.
COMPUTE_MODES = {"Default": "0", "Exclusive_Thread": "1", "Prohibited": "2", "Exclusive_Process": "3"}
PUT_BACK, FAILED, UNREADABLE = "put_back", "failed", "unreadable"


@dataclass(frozen=True)
class GpuSettings:
    bdf: str
    compute_mode: str | None = None  # nvidia-smi's word: Default, Exclusive_Process, Prohibited
    power_limit_w: float | None = None
    app_clock_graphics_mhz: int | None = None
    app_clock_memory_mhz: int | None = None
    accounting_mode: bool | None = None
    persistence_mode: bool | None = None
    na: dict[str, str] = field(default_factory=dict)  # setting -> what nvidia-smi printed instead
    error: str | None = None  # nvidia-smi could not say at all (then every setting is None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SettingChange:
    """One setting found different from the saved value, and what putting it back did."""

    bdf: str
    setting: str
    saved: Any
    found: Any
    status: str  # put_back, failed, unreadable
    detail: str = ""

    def __str__(self) -> str:
        if self.status == PUT_BACK:
            return f"{self.setting} of {self.bdf} -> {self.saved} (was {self.found})"
        return f"{self.setting} of {self.bdf}: {self.status}: {self.detail}"


def _na(text: str) -> bool:
    return text.startswith("[") or text in ("N/A", "")


def parse(bdf: PciAddress, stdout: str) -> GpuSettings:
    """One line of the query's csv output for this GPU."""
    values: dict[str, Any] = {}
    na: dict[str, str] = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(QUERY):
            continue
        row = dict(zip(QUERY, cells, strict=True))
        try:
            if PciAddress.parse(_sysfs_form(row["pci.bus_id"])) != bdf:
                continue
        except GpusoakError:
            continue
        for name, key in SETTINGS.items():
            text = row[key]
            if _na(text):
                na[name] = text or "(empty)"
                continue
            try:
                values[name] = _convert(name, text)
            except ValueError:
                na[name] = f"unexpected value {text!r}"
        return GpuSettings(str(bdf), **values, na=na)
    return GpuSettings(str(bdf), error=f"nvidia-smi printed no row for {bdf.nvml_bus_id}: {stdout.strip()[:200]!r}")


def _sysfs_form(bus_id: str) -> str:
    """00000000:18:00.0 -> 0000:18:00.0 (nvidia-smi prints an 8-digit domain)."""
    domain, _, rest = bus_id.partition(":")
    return f"{int(domain, 16):04x}:{rest.lower()}" if domain else bus_id


def _convert(name: str, text: str) -> Any:
    if name == "compute_mode":
        return text
    if name == "power_limit_w":
        return float(text)
    if name.startswith("app_clock"):
        return int(float(text))
    if text not in ("Enabled", "Disabled"):
        raise ValueError(text)
    return text == "Enabled"


def read(node: Node, bdf: PciAddress, ctx: Context) -> GpuSettings:
    argv = ["nvidia-smi", f"--query-gpu={','.join(QUERY)}", "--format=csv,noheader,nounits", "-i", bdf.nvml_bus_id]
    try:
        result = run(node, argv, ctx, "reading GPU settings")
    except GpusoakError as err:
        return GpuSettings(str(bdf), error=str(err))
    if not result.ok:
        text = (result.stderr or result.stdout).strip().splitlines()
        return GpuSettings(str(bdf), error=f"nvidia-smi exited {result.returncode}: {text[0] if text else ''}")
    return parse(bdf, result.stdout)


def _set_argv(bus_id: str, setting: str, saved: GpuSettings) -> list[str] | None:
    base = ["nvidia-smi", "-i", bus_id]
    value = getattr(saved, setting)
    if setting == "compute_mode":
        return base + ["-c", COMPUTE_MODES[value]] if value in COMPUTE_MODES else None
    if setting == "power_limit_w":
        return base + ["-pl", f"{value:g}"]
    if setting in ("app_clock_graphics_mhz", "app_clock_memory_mhz"):
        # -ac takes the pair "<memory,graphics>"; both must be known to set either.
        if saved.app_clock_memory_mhz is None or saved.app_clock_graphics_mhz is None:
            return None
        return base + ["-ac", f"{saved.app_clock_memory_mhz},{saved.app_clock_graphics_mhz}"]
    return base + [{"accounting_mode": "-am", "persistence_mode": "-pm"}[setting], str(int(value))]


def _differs(setting: str, saved: Any, now: Any) -> bool:
    if setting == "power_limit_w" and saved is not None and now is not None:
        return abs(saved - now) > 0.5  # the query prints two decimals; the limit is set in watts
    return saved != now


def put_back(node: Node, saved: GpuSettings, ctx: Context) -> list[SettingChange]:
    """Set back every saved setting that now reads differently; NA ones are left alone. Returns
    one change per setting found different (or one ``unreadable`` when nvidia-smi cannot say)."""
    if saved.error is not None:
        return []  # nothing was known before: nothing to put back
    bdf = PciAddress.parse(saved.bdf)
    now = read(node, bdf, ctx)
    if now.error is not None:
        return [SettingChange(saved.bdf, "settings", None, None, UNREADABLE, now.error)]
    out: list[SettingChange] = []
    done_argv: set[tuple[str, ...]] = set()
    for setting in SETTINGS:
        want, found = getattr(saved, setting), getattr(now, setting)
        if want is None or not _differs(setting, want, found):
            continue
        argv = _set_argv(bdf.nvml_bus_id, setting, saved)
        if argv is None:
            out.append(SettingChange(saved.bdf, setting, want, found, FAILED, "no nvidia-smi option sets it back"))
            continue
        if tuple(argv) in done_argv:  # -ac sets both clocks at once
            out.append(SettingChange(saved.bdf, setting, want, found, PUT_BACK))
            continue
        done_argv.add(tuple(argv))
        out.append(_set(node, argv, ctx, saved.bdf, setting, want, found))
    return out


def _set(node: Node, argv: list[str], ctx: Context, bdf: str, setting: str, want: Any, found: Any) -> SettingChange:
    try:
        result = run(node, argv, ctx, f"putting back {setting}")
    except GpusoakError as err:
        return SettingChange(bdf, setting, want, found, FAILED, str(err))
    if result.ok:
        return SettingChange(bdf, setting, want, found, PUT_BACK)
    text = (result.stderr or result.stdout).strip().splitlines()
    return SettingChange(bdf, setting, want, found, FAILED,
                         f"{' '.join(argv)} exited {result.returncode}: {text[0] if text else ''}")
