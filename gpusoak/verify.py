"""Did it come back? The recovery assertions, polled to a deadline.

Recovered means, within the deadline: the function is present in sysfs, in D0, bound to the driver
it had, its link as wide as the baseline taken at idle before the soak and, under load in the post-check,
as fast as under load before the first reset (like with like: an idle GPU's link speed drops), NVML sees the same UUID
without GPU_IS_LOST or RESET_REQUIRED, and the kernel logged no fatal event for the device since
the cycle's cursor. A check that cannot look (no such sysfs file, NVML unavailable) is skipped with
its reason; it has not passed, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import Retrying, retry_if_result, wait_exponential

from gpusoak.errors import DeviceGone, GpusoakError, NvmlUnavailable
from gpusoak.host import kmsg, nvml, xid
from gpusoak.host.node import Node
from gpusoak.host.nvml import NvmlQueryFailed
from gpusoak.host.sysfs import NVIDIA_VENDOR
from gpusoak.model import Check, KernelEvent, PciAddress, Snapshot, link_gts, pci_matches

# SKIP: not applicable (not an NVIDIA function, an attribute this kernel lacks): no judgement is
# owed. BLIND: the check applies but could not look (NVML unavailable, its query child broke):
# the cycle is inconclusive, never recovered.
PASS, FAIL, SKIP, BLIND = "pass", "fail", "skip", "cannot_look"

_FATAL_KINDS = {"fell_off_bus", "flr_not_ready", "flr_failed", "reset_failed", "d3cold",
                "rminit_failed", "msix_failed", "link_down"}


def is_fatal(event: KernelEvent) -> bool:
    """The one place that decides which kernel events fail a cycle."""
    if event.kind == "xid":
        return event.xid is not None and xid.fails_cycle(event.xid)
    if event.kind == "aer":
        return event.severity in ("nonfatal", "fatal")
    return event.kind in _FATAL_KINDS


def event_reason(event: KernelEvent) -> str:
    return f"xid_{event.xid}" if event.kind == "xid" else event.kind


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
        driver = attr("driver", lambda: fn.driver)
        link = attr("link", lambda: fn.link)
    except DeviceGone:
        return Snapshot(str(bdf), present=False, nvml_status=_nvml_status(node, bdf)[0])
    status, uuid = _nvml_status(node, bdf)
    siblings = tuple((str(b), node.sysfs.function(b).driver) for b in fn.sibling_functions())
    return Snapshot(str(bdf), True, power, driver, link, uuid, status, siblings, tuple(errors))


def _nvml_status(node: Node, bdf: PciAddress) -> tuple[str, str | None]:
    vendor = node.sysfs.function(bdf).vendor
    if vendor is not None and vendor != NVIDIA_VENDOR:
        return f"not_applicable: not an NVIDIA GPU (vendor 0x{vendor:04x}): NVML has nothing to say", None
    if node.nvml is None:
        return f"unavailable: {node.nvml_unavailable}", None
    try:
        health = node.nvml.health(bdf)
    except (NvmlQueryFailed, NvmlUnavailable) as err:
        return f"unavailable: NVML could not look: {err}", None  # gpusoak's child, not the GPU
    except GpusoakError as err:
        return f"error: {err}", None
    return health.status, health.uuid


def compare(baseline: Snapshot, now: Snapshot) -> list[Check]:
    """The sysfs and NVML checks of one poll, against the idle baseline."""
    if not now.present:
        return [Check("present", FAIL, "the function is gone from sysfs")]
    checks = [Check("present", PASS)]
    if now.read_errors:
        checks.append(Check("sysfs_read", FAIL, "; ".join(now.read_errors)))
    if now.power_state is None:
        checks.append(Check("power_state", SKIP, "no power_state file in this kernel's sysfs"))
    else:
        # D0, like with like: a function no driver ever enabled reads "unknown" (the PCI core's
        # current_state was never set; seen on Linux 6.1 in the real-kernel tier), and must read so again.
        expected = baseline.power_state if baseline.power_state not in (None, "D0") and baseline.driver is None else "D0"
        checks.append(Check("power_state", PASS if now.power_state == expected else FAIL,
                            f"power state {now.power_state}, expected {expected}"))
    checks.append(Check("driver", PASS if now.driver == baseline.driver else FAIL,
                        f"bound to {now.driver or 'no driver'}, expected {baseline.driver}"))
    if baseline.siblings or now.siblings:
        checks.append(Check("functions", PASS if now.siblings == baseline.siblings else FAIL,
                            f"functions {_fmt_siblings(now.siblings)}, expected {_fmt_siblings(baseline.siblings)}"))
    checks.extend(_link_checks(baseline, now))
    checks.append(_nvml_check(baseline, now))
    return checks


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
    if status.startswith("unavailable"):
        return Check("nvml", BLIND, status)
    if status != nvml.OK:
        return Check("nvml", FAIL, f"NVML: {status}")
    if baseline.uuid and now.uuid != baseline.uuid:
        return Check("nvml", FAIL, f"NVML UUID {now.uuid}, expected {baseline.uuid}")
    return Check("nvml", PASS, f"NVML sees {now.uuid}")


def device_events(node: Node, bdf: PciAddress, cursor: int) -> list[KernelEvent]:
    """Events for this function (or its slot) logged after ``cursor``."""
    return [e for e in kmsg.events(node.kmsg.records_since(cursor)) if pci_matches(e.pci, bdf)]


@dataclass(frozen=True)
class Poll:
    checks: tuple[Check, ...]
    events: tuple[KernelEvent, ...]
    at_s: float

    @property
    def fatal(self) -> list[KernelEvent]:
        return [e for e in self.events if is_fatal(e)]

    @property
    def recovered(self) -> bool:
        return not self.fatal and all(c.status != FAIL for c in self.checks)

    @property
    def done(self) -> bool:
        # A fatal event is final: nothing after it turns the cycle into a recovery.
        return self.recovered or bool(self.fatal)


def await_recovery(node: Node, bdf: PciAddress, baseline: Snapshot, cursor: int,
                   deadline_s: float) -> Poll:
    """Poll until recovered, a fatal kernel event, or the deadline; return the last poll."""
    clock = node.clock
    start = clock.monotonic()
    expo = wait_exponential(multiplier=0.05, min=0.05, max=2.0)

    def wait(state) -> float:
        # Back off, but not past the deadline; never below 10 ms, or float rounding near the
        # deadline could leave a simulated clock creeping towards it in ever smaller steps.
        return max(0.01, min(expo(state), deadline_s - (clock.monotonic() - start)))

    def poll() -> Poll:
        checks = compare(baseline, snapshot(node, bdf))
        return Poll(tuple(checks), tuple(device_events(node, bdf, cursor)), clock.monotonic())

    retrying = Retrying(
        stop=lambda state: clock.monotonic() - start >= deadline_s - 1e-6,
        wait=wait,
        retry=retry_if_result(lambda p: not p.done),
        sleep=clock.sleep,
        retry_error_callback=lambda state: state.outcome.result(),
    )
    return retrying(poll)
