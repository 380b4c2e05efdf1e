"""MIG: a GPU's MIG mode and its GPU/compute instance layout, read before the first reset, put
back after each cycle and checked in recovery.

A GPU reset or driver reload destroys every GPU instance and compute instance ("MIG devices are
not persistent across GPU resets or driver reloads"; mig-parted / mig-manager recreate them at
boot: MIG user guide, https://docs.nvidia.com/datacenter/tesla/mig-user-guide/ [U: exact
wording]); on Ampere a pending MIG-mode change takes effect at the next GPU reset ("The pending
MIG mode refers to the target mode following the next activation trigger", nvmlDeviceGetMigMode,
https://docs.nvidia.com/deploy/nvml-api/group__nvmlMultiInstanceGPU.html). So a soak of a MIG GPU
would leave it without instances, or in another mode, and the load would find no device.

Everything goes through ``nvidia-smi`` on the node's runner, as gpu_settings does. Formats:
``--query-gpu=mig.mode.current,mig.mode.pending`` prints Enabled / Disabled (or [N/A] on a GPU
without MIG); ``nvidia-smi mig -lgi`` / ``-lci`` print the tables below and ``-L`` lists
``MIG 1g.5gb      Device  0: (UUID: MIG-...)`` under each GPU (samples recorded on an A100 with
driver 510.47.03; MIG user guide, "Getting Started with MIG").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from gpusoak.actions.base import Context, run
from gpusoak.errors import GpusoakError
from gpusoak.host.node import Node
from gpusoak.model import Check, Finding, PciAddress
from gpusoak.verify import BLIND, FAIL, PASS

MIG_ENABLED = "mig_enabled"  # refusal: MIG is on and the operator did not opt in (--allow-mig)
MIG_MODE_PENDING = "mig_mode_pending"  # refusal: a reset would apply a pending MIG-mode change
MIG_UNKNOWN = "mig_unknown"  # the MIG mode or layout could not be read before the first reset
MIG_LAYOUT = "mig_layout"  # the recovery check: the saved instance layout is back

# |   0  MIG 1g.5gb          19       11          0:1     |   (-lgi: GPU, name, profile, GI id, placement)
_GI_ROW = re.compile(r"^\|\s+(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|")
# |   0     11       MIG 1g.5gb           0         0          0:1     |   (-lci: GPU, GI id, name, profile, CI id, placement)
_CI_ROW = re.compile(r"^\|\s+(\d+)\s+(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|")
#   MIG 1g.5gb      Device  0: (UUID: MIG-b6cd45f2-9655-5269-9b96-65446729d5dc)
_L_MIG = re.compile(r"^\s+MIG\s+\S+\s+Device\s+\d+:\s+\(UUID:\s+(MIG-[^)\s]+)\)")
_L_GPU = re.compile(r"^GPU\s+\d+:.*\(UUID:\s+(GPU-[^)\s]+)\)")


@dataclass(frozen=True)
class MigState:
    bdf: str
    current: str | None = None  # Enabled, Disabled; None where the GPU has no MIG ([N/A])
    pending: str | None = None
    # (profile id, placement start, placement size, name) per GPU instance, in placement order
    gpu_instances: list[list] = field(default_factory=list)
    # (GI placement start, CI profile id, CI placement start, CI placement size) per compute instance
    compute_instances: list[list] = field(default_factory=list)
    error: str | None = None  # nvidia-smi could not say

    @property
    def enabled(self) -> bool:
        return self.current == "Enabled"

    @property
    def change_pending(self) -> bool:
        return self.current is not None and self.pending is not None and self.current != self.pending

    def layout(self) -> tuple:
        return tuple(map(tuple, self.gpu_instances)), tuple(map(tuple, self.compute_instances))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigState:
        return cls(**data)


def refusals(state: MigState | None, allow_mig: bool) -> list[Finding]:
    """Before any reset: a pending mode change would be applied by the reset and change the GPU
    under test; a MIG GPU is soaked only with the operator's opt-in (its layout is put back)."""
    if state is None:
        return []
    if state.error is not None:
        # Not known is not "no MIG": a MIG GPU reset without its layout saved loses its instances.
        return [Finding(MIG_UNKNOWN, f"nvidia-smi could not say whether MIG is enabled on {state.bdf} before "
                        f"the first reset ({state.error.strip()[:200]}): not reset, its instances would be lost")]
    out = []
    if state.change_pending:
        out.append(Finding(MIG_MODE_PENDING, f"MIG mode is {state.current} with {state.pending} pending on "
                           f"{state.bdf}: a reset would apply the change; apply it (or set the mode back with "
                           "nvidia-smi -mig) before soaking"))
    if state.enabled and not allow_mig:
        out.append(Finding(MIG_ENABLED, f"MIG is enabled on {state.bdf}: a reset destroys its GPU and compute "
                           "instances; --allow-mig soaks it, recreating the saved layout after each cycle"))
    return out


def _bus(bdf: PciAddress) -> list[str]:
    return ["-i", bdf.nvml_bus_id]


def _smi(node: Node, argv: list[str], ctx: Context, what: str) -> tuple[bool, str]:
    try:
        r = run(node, argv, ctx, what)
    except GpusoakError as err:
        return False, str(err)
    if not r.ok:
        text = (r.stderr or r.stdout).strip().splitlines()
        return False, f"{' '.join(argv)} exited {r.returncode}: {text[0] if text else ''}"
    return True, r.stdout


def read(node: Node, bdf: PciAddress, ctx: Context) -> MigState:
    """The MIG mode, and where it is enabled, the instance layout."""
    ok, out = _smi(node, ["nvidia-smi", "--query-gpu=mig.mode.current,mig.mode.pending",
                          "--format=csv,noheader", *_bus(bdf)], ctx, "reading the MIG mode")
    if not ok:
        return MigState(str(bdf), error=out)
    cells = [c.strip() for c in (out.strip().splitlines() or [""])[0].split(",")]
    if len(cells) != 2:
        return MigState(str(bdf), error=f"unexpected MIG mode output {out.strip()[:100]!r}")
    current, pending = (None if c.startswith("[") or c == "N/A" else c for c in cells)
    if current != "Enabled":
        return MigState(str(bdf), current, pending)
    return _layout(node, bdf, ctx, MigState(str(bdf), current, pending))


def _layout(node: Node, bdf: PciAddress, ctx: Context, state: MigState) -> MigState:
    ok, gi_out = _smi(node, ["nvidia-smi", "mig", "-lgi", *_bus(bdf)], ctx, "listing GPU instances")
    if not ok and "No GPU instances found" not in gi_out:
        return MigState(state.bdf, state.current, state.pending, error=gi_out)
    gis = {int(m[4]): [int(m[3]), int(m[5]), int(m[6]), m[2]] for m in map(_GI_ROW.match, gi_out.splitlines()) if m}
    cis = []
    if gis:
        ok, ci_out = _smi(node, ["nvidia-smi", "mig", "-lci", *_bus(bdf)], ctx, "listing compute instances")
        if not ok and "No compute instances found" not in ci_out:
            return MigState(state.bdf, state.current, state.pending, error=ci_out)
        for m in map(_CI_ROW.match, ci_out.splitlines()):
            if m and int(m[2]) in gis:
                cis.append([gis[int(m[2])][1], int(m[4]), int(m[6]), int(m[7])])
    return MigState(state.bdf, state.current, state.pending, sorted(gis.values(), key=lambda g: g[1]), sorted(cis))


def gi_ids(node: Node, bdf: PciAddress, ctx: Context) -> dict[int, int] | str:
    """Placement start -> GPU instance id, now (ids are the driver's, new after each recreation)."""
    ok, out = _smi(node, ["nvidia-smi", "mig", "-lgi", *_bus(bdf)], ctx, "listing GPU instances")
    if not ok:
        return {} if "No GPU instances found" in out else out
    return {int(m[5]): int(m[4]) for m in map(_GI_ROW.match, out.splitlines()) if m}


def recreate(node: Node, saved: MigState, ctx: Context) -> Check:
    """Put the saved layout back where it differs, then read it again: the ``mig_layout`` check.
    FAIL: the mode changed, or a creation failed, or the layout read back differs. BLIND: nvidia-smi
    could not say."""
    bdf = PciAddress.parse(saved.bdf)
    now = read(node, bdf, ctx)
    if now.error is not None:
        return Check(MIG_LAYOUT, BLIND, f"could not read the MIG state: {now.error}")
    if now.current != saved.current:
        return Check(MIG_LAYOUT, FAIL, f"MIG mode is {now.current}, was {saved.current}")
    if now.layout() == saved.layout():
        return Check(MIG_LAYOUT, PASS, f"{len(saved.gpu_instances)} GPU instance(s) in place")
    errors = _rebuild(node, bdf, saved, now, ctx)
    again = read(node, bdf, ctx)
    if again.error is not None:
        return Check(MIG_LAYOUT, BLIND, f"could not read the MIG layout back: {again.error}")
    if errors or again.layout() != saved.layout():
        detail = "; ".join(errors) or "the layout read back differs from the saved one"
        return Check(MIG_LAYOUT, FAIL, f"recreating the MIG layout: {detail} (saved {saved.gpu_instances}, "
                     f"now {again.gpu_instances})")
    return Check(MIG_LAYOUT, PASS, f"recreated {len(saved.gpu_instances)} GPU instance(s) and "
                 f"{len(saved.compute_instances)} compute instance(s)")


def _rebuild(node: Node, bdf: PciAddress, saved: MigState, now: MigState, ctx: Context) -> list[str]:
    errors: list[str] = []
    if now.gpu_instances:  # partly there: start from none (compute instances first, then GPU instances)
        for argv in (["nvidia-smi", "mig", "-dci", *_bus(bdf)], ["nvidia-smi", "mig", "-dgi", *_bus(bdf)]):
            ok, out = _smi(node, argv, ctx, "destroying MIG instances")
            if not ok:
                errors.append(out)
    for profile, start, _size, _name in saved.gpu_instances:
        # <profile id>:<placement start> pins the placement (nvidia-smi mig --help: "-cgi ... with
        # optional placement") [U: the ":start" syntax is not confirmed from NVIDIA's text here].
        ok, out = _smi(node, ["nvidia-smi", "mig", *_bus(bdf), "-cgi", f"{profile}:{start}"], ctx,
                       "creating a GPU instance")
        if not ok:
            errors.append(out)
    ids = gi_ids(node, bdf, ctx)
    if isinstance(ids, str):
        return [*errors, ids]
    for gi_start, profile, _start, _size in saved.compute_instances:
        if gi_start not in ids:
            errors.append(f"no GPU instance at placement {gi_start} for its compute instance")
            continue
        ok, out = _smi(node, ["nvidia-smi", "mig", *_bus(bdf), "-gi", str(ids[gi_start]), "-cci", str(profile)],
                       ctx, "creating a compute instance")
        if not ok:
            errors.append(out)
    return errors


def mig_uuid(node: Node, gpu_uuid: str, ctx: Context) -> str | None:
    """The MIG UUID of the GPU's first MIG device now (``nvidia-smi -L``): what CUDA_VISIBLE_DEVICES
    must name on a MIG GPU, where CUDA enumerates MIG devices only (MIG user guide, "CUDA Device
    Enumeration") [U: that a MIG GPU's own GPU-UUID enumerates nothing]. New after each recreation."""
    ok, out = _smi(node, ["nvidia-smi", "-L"], ctx, "listing MIG devices")
    if not ok:
        return None
    mine = False
    for line in out.splitlines():
        if (g := _L_GPU.match(line)) is not None:
            mine = g[1] == gpu_uuid
        elif mine and (m := _L_MIG.match(line)) is not None:
            return m[1]
    return None
