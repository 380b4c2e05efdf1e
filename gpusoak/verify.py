"""Did it come back? The recovery assertions, polled to a deadline.

Recovered means, within the deadline: the function is present in sysfs, in D0, bound to the driver
it had, its link as wide as the baseline taken at idle before the soak and, under load in the post-check,
as fast as under load before the first reset (like with like: an idle GPU's link speed drops), NVML sees the same UUID
without GPU_IS_LOST or RESET_REQUIRED, and the kernel logged no fatal event for the device since
the cycle's cursor. A check that cannot look (no such sysfs file, NVML unavailable) is skipped with
its reason; it has not passed, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tenacity import Retrying, retry_if_result, wait_exponential

from gpusoak.actions.base import nvswitches
from gpusoak.errors import DeviceGone, GpusoakError, NvmlUnavailable
from gpusoak.host import kmsg, nvml
from gpusoak.host.node import Node
from gpusoak.host.nvml import NvmlQueryFailed
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.model import (
    INDEX_CHANGED,
    MINOR_CHANGED,
    Check,
    Finding,
    KernelEvent,
    PciAddress,
    Snapshot,
    link_gts,
    pci_matches,
)

# Which kernel events fail a cycle: the verdict's one list (callers use them through this module).
from gpusoak.verdict.events import FATAL_KINDS, event_reason, is_fatal, is_fatal_reason  # noqa: F401

# SKIP: not applicable (not an NVIDIA function, an attribute this kernel lacks): no judgement is
# owed. BLIND: the check applies but could not look (NVML unavailable, its query child broke):
# the cycle is inconclusive, never recovered.
PASS, FAIL, SKIP, BLIND = "pass", "fail", "skip", "cannot_look"
NVIDIA_DRIVER = "nvidia"

def snapshot(node: Node, bdf: PciAddress) -> Snapshot:
    """A fresh read of everything recovery is judged on."""
    fn = node.sysfs.function(bdf)
    if not fn.present:
        return Snapshot(str(bdf), present=False, nvml_status=_nvml_status(node, bdf)[0])
    errors: list[str] = []

    def attr(name: str, read):
        # A read that fails on the device under test is evidence, not gpusoak's crash: a link that
        # went down answers EINVAL or EIO (pci-sysfs.c current_link_speed_show returns -EINVAL when
        # the config read fails, as it does for a disconnected device), and the run goes on.
        try:
            return read()
        except DeviceGone:
            raise
        except GpusoakError as err:
            errors.append(f"{name}: {err}")
            return None

    try:
        power = attr("power_state", lambda: fn.power_state)
        control = attr("power/control", lambda: fn.runtime_pm)
        driver = attr("driver", lambda: fn.driver)
        link = attr("link", lambda: fn.link)
    except DeviceGone:
        return Snapshot(str(bdf), present=False, nvml_status=_nvml_status(node, bdf)[0])
    status, uuid, values = _nvml_status(node, bdf)
    siblings = tuple((str(b), node.sysfs.function(b).driver) for b in fn.sibling_functions())
    return Snapshot(str(bdf), True, power, driver, link, uuid, status, siblings, tuple(errors), control,
                    _int(values.get("minor")), _int(values.get("index")))


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _nvml_status(node: Node, bdf: PciAddress) -> tuple[str, str | None, dict]:
    vendor = node.sysfs.function(bdf).vendor
    if vendor is not None and vendor != NVIDIA_VENDOR:
        return f"not_applicable: not an NVIDIA GPU (vendor 0x{vendor:04x}): NVML has nothing to say", None, {}
    if node.nvml is None:
        return f"unavailable: {node.nvml_unavailable}", None, {}
    try:
        health = node.nvml.health(bdf)
    except (NvmlQueryFailed, NvmlUnavailable) as err:
        return f"unavailable: NVML could not look: {err}", None, {}  # gpusoak's child, not the GPU
    except GpusoakError as err:
        return f"error: {err}", None, {}
    return health.status, health.uuid, health.values


def compare(baseline: Snapshot, now: Snapshot) -> list[Check]:
    """The sysfs and NVML checks of one poll, against the idle baseline."""
    if not now.present:
        return [Check("present", FAIL, "the function is gone from sysfs")]
    checks = [Check("present", PASS)]
    if now.read_errors:
        checks.append(Check("sysfs_read", FAIL, "; ".join(now.read_errors)))
    checks.append(_power_check(baseline, now))
    checks.append(Check("driver", PASS if now.driver == baseline.driver else FAIL,
                        f"bound to {now.driver or 'no driver'}, expected {baseline.driver}"))
    if baseline.siblings or now.siblings:
        checks.append(Check("functions", PASS if now.siblings == baseline.siblings else FAIL,
                            f"functions {_fmt_siblings(now.siblings)}, expected {_fmt_siblings(baseline.siblings)}"))
    checks.extend(_link_checks(baseline, now))
    checks.append(_nvml_check(baseline, now))
    return checks


RUNTIME_SUSPENDED = ("D3hot", "D3cold")


def _power_check(baseline: Snapshot, now: Snapshot) -> Check:
    if now.power_state is None:
        if any(e.startswith("power_state:") for e in now.read_errors):
            return Check("power_state", FAIL, "power_state could not be read (see sysfs_read)")
        return Check("power_state", SKIP, "no power_state file in this kernel's sysfs")
    if now.power_state in RUNTIME_SUSPENDED and now.runtime_pm == "auto":
        # Runtime PM allowed (vfio-pci's pm_runtime_allow, RTD3 under nvidia): an idle device
        # suspends, so D3 says nothing about recovery either way. gpusoak resumes a GPU it may
        # reset (power/control on, Soak.start); where it could not, the D0 was not shown.
        return Check("power_state", BLIND, f"runtime-suspended in {now.power_state} (power/control auto): "
                     "whether it comes back to D0 was not shown")
    # D0, like with like: a function no driver ever enabled reads "unknown" (the PCI core's
    # current_state was never set; seen on Linux 6.1 in the real-kernel tier), and must read so again.
    expected = baseline.power_state if baseline.power_state not in (None, "D0") and baseline.driver is None else "D0"
    return Check("power_state", PASS if now.power_state == expected else FAIL,
                 f"power state {now.power_state}, expected {expected}")


def _fmt_siblings(siblings: tuple[tuple[str, str | None], ...]) -> str:
    return ", ".join(f"{b} on {d or 'no driver'}" for b, d in siblings) or "none"


def _link_checks(baseline: Snapshot, now: Snapshot) -> list[Check]:
    b, n = baseline.link, now.link
    if b is None or n is None or b.current_width is None or n.current_width is None:
        width = Check("link_width", SKIP, "no current_link_width file in this kernel's sysfs")
    else:
        width = Check("link_width", PASS if n.current_width == b.current_width else FAIL,
                      f"link x{n.current_width}, expected x{b.current_width}")
    # Speed is not compared at idle: an idle NVIDIA GPU lowers its PCIe generation ("may be lower
    # than the max" when not in use, NVML nvmlDeviceGetCurrPcieLinkGeneration), so two idle
    # readings need not agree. It is compared under load (loaded_speed_check).
    speed = Check("link_speed", SKIP, f"not applicable at idle (link {n.current_speed if n else None}): "
                  "an idle GPU lowers its link generation; compared under load in the post-check")
    return [width, speed]


def loaded_speed_check(before: str | None, after: str | None, *, post_check: bool,
                       error: str | None = None) -> Check:
    """The link speed under load after the reset (the post-check's reading) against the reading
    under load before the first reset. Not applicable without a post-check (the user asked for no
    load after the reset) or where either reading has no file; a failed read is a failure."""
    if not post_check:
        return Check("link_speed", SKIP, "not compared: no load after the reset (no post-check)")
    if error:
        return Check("link_speed", FAIL, f"link speed under load could not be read: {error}")
    if before is None:
        return Check("link_speed", SKIP, "not compared: no reading under load before the first reset")
    if after is None:
        return Check("link_speed", SKIP, "no current_link_speed file in this kernel's sysfs")
    lower = (link_gts(after) or 0.0) < (link_gts(before) or 0.0)
    return Check("link_speed", FAIL if lower else PASS, f"link {after} under load, expected {before}")


def _nvml_check(baseline: Snapshot, now: Snapshot) -> Check:
    status = now.nvml_status
    if status.startswith("not_applicable"):
        return Check("nvml", SKIP, status)
    if baseline.driver not in (None, NVIDIA_DRIVER) and now.driver == baseline.driver:
        # NVML sees only the GPUs the nvidia driver drives: one left on vfio-pci (a passthrough
        # host's) is NOT_FOUND there by design (nvmlDeviceGetHandleByPciBusId_v2).
        return Check("nvml", SKIP, f"bound to {now.driver}, as at the baseline: NVML sees only GPUs nvidia drives")
    if status.startswith("unavailable"):
        return Check("nvml", BLIND, status)
    if status != nvml.OK:
        return Check("nvml", FAIL, f"NVML: {status}")
    if baseline.uuid and now.uuid != baseline.uuid:
        return Check("nvml", FAIL, f"NVML UUID {now.uuid}, expected {baseline.uuid}")
    return Check("nvml", PASS, f"NVML sees {now.uuid}")


# nvmlGpuFabricState_t (NVML API reference, Fabric definitions; nvidia-ml-py NVML_GPU_FABRIC_STATE_*).
FABRIC_STATES = {0: "NOT_SUPPORTED", 1: "NOT_STARTED", 2: "IN_PROGRESS", 3: "COMPLETED"}
FABRIC_COMPLETED = 3
FABRIC_NOT_COMPLETED, FABRIC_UNHEALTHY = "fabric_not_completed", "fabric_unhealthy"
# NVML_GPU_FABRIC_HEALTH_MASK_* fields, (shift, width mask, the values that are unhealthy): degraded
# bandwidth TRUE, route recovery in progress TRUE, route unhealthy TRUE, access-timeout recovery
# TRUE, and an incorrect configuration other than NOT_SUPPORTED (0) or NONE (1). Same source.
_FABRIC_HEALTH = {"degraded_bandwidth": (0, 0x3, {1}), "route_recovery": (2, 0x3, {1}),
                  "route_unhealthy": (4, 0x3, {1}), "access_timeout_recovery": (6, 0x3, {1}),
                  "incorrect_configuration": (8, 0xF, set(range(2, 16)))}


def fabric_health_problems(mask: int) -> list[str]:
    """The health-mask fields that say the GPU's fabric is not clean."""
    return [name for name, (shift, width, bad) in _FABRIC_HEALTH.items() if (mask >> shift) & width in bad]


def fabric_check(node: Node, bdf: PciAddress, switches: list[PciAddress] | None = None) -> Check:
    """On an NVSwitch node a GPU must rejoin the NVLink fabric after a reset before CUDA initialises
    (cudaErrorSystemNotReady until then; NVIDIA Fabric Manager user guide): state COMPLETED with
    status success and a clean health mask. Until then FAIL, so the poll goes on to the deadline.
    No NVSwitch: not applicable. NVML unable to say on an NVSwitch node: could not look."""
    vendor = node.sysfs.function(bdf).vendor
    if vendor is not None and vendor != NVIDIA_VENDOR:
        return Check("fabric", SKIP, "not applicable: not an NVIDIA GPU")
    switches = nvswitches(node) if switches is None else switches
    if not switches:
        return Check("fabric", SKIP, "not applicable: no NVSwitch on this node")
    if node.nvml is None:
        return Check("fabric", BLIND, f"NVML unavailable on an NVSwitch node: {node.nvml_unavailable}")
    try:
        info = node.nvml.fabric(bdf)
    except GpusoakError as err:  # the query child, NVML unavailable, or an NVML error on the call
        return Check("fabric", BLIND, f"NVML could not read the fabric state: {err}")
    if not info or info.get("state", 0) == 0:
        return Check("fabric", BLIND, f"NVML reports no fabric state for a GPU on a node with {len(switches)} "
                                      "NVSwitch functions (nvmlDeviceGetGpuFabricInfoV not supported)")
    state = FABRIC_STATES.get(info["state"], str(info["state"]))
    if info["state"] != FABRIC_COMPLETED:
        return Check(FABRIC_NOT_COMPLETED, FAIL, f"fabric state {state}, expected COMPLETED")
    problems = fabric_health_problems(info.get("health_mask", 0))
    if info.get("status", 0) != 0 or problems:
        return Check(FABRIC_UNHEALTHY, FAIL, f"fabric COMPLETED with status {info.get('status')} and health "
                                             f"mask 0x{info.get('health_mask', 0):x} ({', '.join(problems) or 'clean'})")
    return Check("fabric", PASS, "fabric state COMPLETED, health mask clean")


def device_events(node: Node, bdf: PciAddress, cursor: int) -> list[KernelEvent]:
    """Events for this function (or its slot) logged after ``cursor``."""
    return [e for e in kmsg.events(node.kmsg.records_since(cursor)) if pci_matches(e.pci, bdf)]


@dataclass(frozen=True)
class Poll:
    checks: tuple[Check, ...]
    events: tuple[KernelEvent, ...]
    at_s: float
    # When every check first passed (None: never), and whether they then stayed good for the whole
    # settle window. A GPU that comes back and goes away again within it has not recovered.
    first_good_s: float | None = None
    unsettled: bool = False
    snapshot: Snapshot | None = None  # the reading the checks were made on

    @property
    def fatal(self) -> list[KernelEvent]:
        return [e for e in self.events if is_fatal(e)]

    @property
    def good(self) -> bool:
        """This one reading passes: no fatal event, no failed check."""
        return not self.fatal and all(c.status != FAIL for c in self.checks)

    @property
    def recovered(self) -> bool:
        return self.good and not self.unsettled

    @property
    def done(self) -> bool:
        # A fatal event is final: nothing after it turns the cycle into a recovery.
        return self.good or bool(self.fatal)


SETTLE_REREAD_S = 1.0  # in a shared window, the least time after a GPU's first good poll it is read again
SETTLE_POLL_S = 5.0  # how often the checks are read again inside the settle window (kernel events: all of it)


def await_recovery(node: Node, bdf: PciAddress, baseline: Snapshot, cursor: int,
                   deadline_s: float, settle_s: float = 0.0, settle_until: float | None = None) -> Poll:
    """Poll until every check passes, a fatal kernel event, or the deadline; then, if it passed,
    keep reading for ``settle_s``: recovery holds only if every reading in that window passes too.
    Delayed reactions of the driver (a GSP RPC timeout logs Xid 119 only once its timeout ran out)
    fall into the window instead of into the next cycle. ``settle_until``: the window ends then
    instead (the GPUs of one node-wide action settle together). Returns the last poll."""
    clock = node.clock
    start = clock.monotonic()
    expo = wait_exponential(multiplier=0.05, min=0.05, max=2.0)

    def wait(state) -> float:
        # Back off, but not past the deadline; never below 10 ms, or float rounding near the
        # deadline could leave a simulated clock creeping towards it in ever smaller steps.
        return max(0.01, min(expo(state), deadline_s - (clock.monotonic() - start)))

    switches = nvswitches(node)  # a static fact of the node: read once per recovery, not per poll

    def poll() -> Poll:
        snap = snapshot(node, bdf)
        checks = compare(baseline, snap)
        if all(c.status != FAIL for c in checks):  # the fabric is read once the GPU itself is back
            checks.append(fabric_check(node, bdf, switches))
        return Poll(tuple(checks), tuple(device_events(node, bdf, cursor)), clock.monotonic(), snapshot=snap)

    retrying = Retrying(
        stop=lambda state: clock.monotonic() - start >= deadline_s - 1e-6,
        wait=wait,
        retry=retry_if_result(lambda p: not p.done),
        sleep=clock.sleep,
        retry_error_callback=lambda state: state.outcome.result(),
    )
    first = retrying(poll)
    if not first.good:
        return first
    if settle_until is None:
        end = first.at_s + settle_s
    else:  # a window shared with other GPUs: still read once more after this one's first good poll
        end = max(settle_until, first.at_s + min(settle_s, SETTLE_REREAD_S))
    return _settle(first, poll, clock, end)


def _settle(first: Poll, poll, clock, end: float) -> Poll:
    """Read again every SETTLE_POLL_S until ``end``; the first reading that is not good ends the
    window: it came back and went away again."""
    good_at = first.at_s
    last = first
    while clock.monotonic() < end - 1e-6:
        clock.sleep(min(SETTLE_POLL_S, end - clock.monotonic()))
        last = poll()
        if not last.good:
            return replace(last, first_good_s=good_at, unsettled=True)
    return replace(last, first_good_s=good_at)


def identity_findings(baseline: Snapshot, now: Snapshot | None) -> list[Finding]:
    """What changed of the GPU's identity besides its UUID: the /dev/nvidiaN minor that Slurm's
    gres.conf names (File=/dev/nvidiaN) and the NVML index the device plugin and CUDA number by.
    A side unread (NVML could not say) is no change: the UUID check already judges NVML."""
    if now is None:
        return []
    out = []
    if baseline.minor is not None and now.minor is not None and now.minor != baseline.minor:
        out.append(Finding(MINOR_CHANGED, f"/dev/nvidia{now.minor}, was /dev/nvidia{baseline.minor} at the "
                           "baseline: a gres.conf or container naming the old node now names another GPU or none"))
    if baseline.nvml_index is not None and now.nvml_index is not None and now.nvml_index != baseline.nvml_index:
        out.append(Finding(INDEX_CHANGED, f"NVML index {now.nvml_index}, was {baseline.nvml_index} at the baseline: "
                           "jobs that pick GPUs by index now get another one"))
    return out

