"""The simulated GPU's MIG state and the ``nvidia-smi mig`` commands that read and change it.

Modelled (sources):
- MIG mode current / pending (nvmlDeviceGetMigMode: "The pending MIG mode refers to the target
  mode following the next activation trigger",
  https://docs.nvidia.com/deploy/nvml-api/group__nvmlMultiInstanceGPU.html). On Ampere
  (arch "ampere") a pending change is applied by the next GPU reset; on Hopper and later the
  change takes effect when it is set, so nothing stays pending there (MIG user guide, "Enable
  MIG Mode": "depending on the GPU product, the driver will attempt to reset the GPU so that MIG
  mode can take effect") [U: which products need the separate reset].
- GPU and compute instances do not survive a GPU reset or the driver probing the GPU again
  (MIG user guide; mig-parted / mig-manager recreate them at boot) [U: exact wording].
- Output formats of ``-lgi``, ``-lci``, ``-cgi``, ``-cci`` and ``-L``: samples recorded on an A100
  with driver 510.47.03 (the column layout; the simulator's widths are its own [I]).
- Profiles: an H100 80GB's ids, names, sizes and placements, illustrative [U]; the compute
  instance profile that spans a GPU instance (ids 0..4 for 1..7 slices) as in those samples.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field

# GI profile id -> (name, slices, allowed placement starts, full-GI CI profile id) [U: illustrative]
PROFILES = {19: ("1g.10gb", 1, (0, 1, 2, 3, 4, 5, 6), 0), 15: ("1g.20gb", 2, (0, 2, 4, 6), 0),
            14: ("2g.20gb", 2, (0, 2, 4), 1), 9: ("3g.40gb", 4, (0, 4), 2), 5: ("4g.40gb", 4, (0,), 3),
            0: ("7g.80gb", 8, (0,), 4)}
_BAR_GI = "+" + "-" * 55 + "+"
_BAR_CI = "+" + "-" * 68 + "+"


@dataclass
class MigState:
    """One GPU's MIG state; ``current`` None for a GPU without MIG."""

    current: str | None = None  # Enabled / Disabled
    pending: str | None = None
    gis: dict[int, tuple[int, int]] = field(default_factory=dict)  # GI id -> (profile id, placement start)
    cis: dict[tuple[int, int], str] = field(default_factory=dict)  # (GI id, CI id) -> MIG UUID
    create_fails: bool = False  # the driver refuses every new GPU instance (a test's fault)

    @classmethod
    def from_spec(cls, raw: dict, seed: str) -> MigState:
        if not raw:
            return cls()
        st = cls(str(raw.get("mode", "Enabled")), str(raw.get("pending", raw.get("mode", "Enabled"))),
                 create_fails=bool(raw.get("create_fails", False)))
        if st.current == "Enabled":
            for profile in raw.get("layout", ()):
                gi = st.create_gi(int(profile), None, seed)
                if isinstance(gi, int):
                    st.create_ci(gi, seed)
        st.create_fails = bool(raw.get("create_fails", False))
        return st

    def lost(self, reset: bool, arch: str) -> None:
        """A reset or a fresh probe: the instances are gone; on Ampere a reset applies a pending mode."""
        self.gis.clear()
        self.cis.clear()
        if reset and arch == "ampere" and self.current is not None:
            self.current = self.pending

    def _free(self, start: int, size: int) -> bool:
        taken = {s + i for p, s in self.gis.values() for i in range(PROFILES[p][1])}
        return start + size <= 8 and not (set(range(start, start + size)) & taken)

    def create_gi(self, profile: int, start: int | None, seed: str) -> int | str:
        if self.create_fails:
            return "Insufficient Resources"
        if profile not in PROFILES:
            return "Invalid Argument"
        _name, size, starts, _ci = PROFILES[profile]
        choices = [s for s in starts if self._free(s, size)] if start is None else \
            ([start] if start in starts and self._free(start, size) else [])
        if not choices:
            return "Insufficient Resources"
        gi = next(i for i in range(1, 15) if i not in self.gis)
        self.gis[gi] = (profile, choices[0])
        return gi

    def create_ci(self, gi: int, seed: str) -> int | str:
        if gi not in self.gis:
            return "Not Found"
        ci = 0
        if (gi, ci) in self.cis:
            return "Insufficient Resources"
        self.cis[(gi, ci)] = "MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"{seed}:{gi}:{ci}:{len(self.cis)}"))
        return ci


def lgi(st: MigState, index: int) -> tuple[int, str, str]:
    if not st.gis:
        return 6, "", "No GPU instances found: Not Found\n"  # [U] exit code
    rows = ["+" + "-" * 55 + "+", "| GPU instances:" + " " * 40 + "|",
            "| GPU   Name             Profile  Instance   Placement  |",
            "|                          ID       ID       Start:Size |", "|" + "=" * 55 + "|"]
    for gi, (p, s) in sorted(st.gis.items(), key=lambda kv: kv[1][1]):
        rows += [f"|   {index}  MIG {PROFILES[p][0]:<14}{p:>4}{gi:>9}{s:>11}:{PROFILES[p][1]:<5} |", _BAR_GI]
    return 0, "\n".join(rows) + "\n", ""


def lci(st: MigState, index: int) -> tuple[int, str, str]:
    if not st.cis:
        return 6, "", "No compute instances found: Not Found\n"  # [U] exit code
    rows = [_BAR_CI, "| Compute instances:" + " " * 49 + "|",
            "| GPU     GPU       Name             Profile   Instance   Placement  |",
            "|       Instance                       ID        ID       Start:Size |",
            "|         ID                                                         |", "|" + "=" * 68 + "|"]
    for gi, ci in sorted(st.cis):
        p = st.gis[gi][0]
        name, size, _starts, cip = PROFILES[p]
        rows += [f"|   {index}  {gi:>5}       MIG {name:<14}{cip:>5}{ci:>10}{0:>11}:{size:<5} |", _BAR_CI]
    return 0, "\n".join(rows) + "\n", ""


def command(st: MigState, index: int, args: tuple[str, ...], seed: str) -> tuple[int, str, str]:
    """``nvidia-smi mig`` with one of -lgi, -lci, -cgi P[:S][,..] [-C], -gi N -cci P, -dci, -dgi."""
    if st.current != "Enabled":
        return 6, "", "Unable to ... : Not Supported (MIG mode is disabled)\n"  # [U] wording
    if "-lgi" in args:
        return lgi(st, index)
    if "-lci" in args:
        return lci(st, index)
    if "-dci" in args:
        st.cis.clear()
        return 0, "Successfully destroyed compute instances\n", ""  # [U] wording
    if "-dgi" in args:
        if st.cis:
            return 19, "", "Unable to destroy GPU instance: In use by another client\n"  # [U]
        st.gis.clear()
        return 0, "Successfully destroyed GPU instances\n", ""  # [U] wording
    if "-cgi" in args:
        return _cgi(st, index, args, seed)
    if "-cci" in args and "-gi" in args:
        gi = int(args[args.index("-gi") + 1])
        ci = st.create_ci(gi, seed)
        if isinstance(ci, str):
            return 2, "", f"Unable to create a compute instance on GPU {index} GPU instance ID {gi}: {ci}\n"
        name, _s, _p, cip = PROFILES[st.gis[gi][0]]
        return 0, (f"Successfully created compute instance ID {ci:2d} on GPU {index:2d} GPU instance ID {gi:2d} "
                   f"using profile MIG {name} (ID {cip:2d})\n"), ""
    return 2, "", 'Invalid combination of input arguments. Please run "nvidia-smi -h" for help.\n'


def _cgi(st: MigState, index: int, args: tuple[str, ...], seed: str) -> tuple[int, str, str]:
    out = []
    for item in args[args.index("-cgi") + 1].split(","):
        profile, _, start = item.partition(":")
        try:
            gi = st.create_gi(int(profile), int(start) if start else None, seed)
        except ValueError:
            gi = "Invalid Argument"
        if isinstance(gi, str):
            return 2, "".join(out), f"Unable to create a GPU instance on GPU {index:2d} using profile {item}: {gi}\n"
        name = PROFILES[int(profile)][0]
        out.append(f"Successfully created GPU instance ID {gi:2d} on GPU {index:2d} using profile MIG {name} "
                   f"(ID {int(profile):2d})\n")
        if "-C" in args:
            st.create_ci(gi, seed)
    return 0, "".join(out), ""
