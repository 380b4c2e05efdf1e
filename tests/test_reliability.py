"""The reliability classes (docs/verdict.md's table), one rule at a time, from cycles built here."""

from gpusoak import score
from gpusoak.model import Check, CycleResult, Finding, KernelEvent


def _r(outcome="recovered", action="flr", cycle=1, findings=(), checks=(), events=(), recovered_by=None):
    return CycleResult("run", "0000:18:00.0", "GPU-1", action, cycle, outcome, "2026-11-22T00:00:00Z", 1.0,
                       1.0 if outcome == "recovered" else None, tuple(findings), tuple(checks), tuple(events),
                       recovered_by=recovered_by)


CLEAN = [_r(cycle=c) for c in range(1, 151)]


def test_churn_safe_needs_every_applicable_action_reliable():
    assert score.reliability(CLEAN, {"flr": "reliable", "bus_reset": "not_applicable"})[0] == score.CHURN_SAFE
    cls, why = score.reliability(CLEAN, {"flr": "reliable", "module_reload": "untested"})
    assert cls == score.UNPROVEN and "module_reload" in why[0]
    assert score.reliability(CLEAN, {"flr": "undecided"})[0] == score.UNPROVEN


def test_without_a_sequential_test_the_wilson_rule_decides():
    assert score.reliability(CLEAN)[0] == score.CHURN_SAFE
    assert score.reliability(CLEAN[:3])[0] == score.UNPROVEN


def test_failures_the_first_rung_fixed_with_nothing_fatal_are_long_jobs_only():
    flaky = CLEAN + [_r("failed", cycle=151, findings=[Finding("recovery_timeout", "checks still failing")],
                        recovered_by="flr")]
    cls, why = score.reliability(flaky, {"flr": "unreliable"})
    assert cls == score.LONG_JOBS_ONLY and "brought back by flr" in why[0]


def test_quarantine_for_a_deeper_rung_a_fatal_event_a_hang_a_gate_or_a_wrong_result():
    cases = [
        _r("failed", findings=[Finding("recovery_timeout", "x")], recovered_by="bus_reset"),
        _r("failed", findings=[Finding("flr_not_ready", "not ready 65535ms after FLR; giving up")], recovered_by="flr"),
        _r("hung", findings=[Finding("hung", "write did not return")]),
        _r("failed", findings=[Finding("gate_aer_corrected_rate", "12/min")]),
        _r("failed", findings=[Finding("post_check_memory_mismatch", "3 words differ")]),
        _r("skipped", findings=[Finding("health_gate", "health_gate: retired_pages: 70 retired")]),
    ]
    for bad in cases:
        assert score.reliability(CLEAN + [bad])[0] == score.QUARANTINE_CLASS, bad.findings


def test_hardware_investigation_for_xid_79_msix_a_degraded_link_remap_failure_or_a_recurrence():
    xid79 = KernelEvent("xid", "NVRM: Xid (PCI:0000:18:00): 79, GPU has fallen off the bus.", pci="0000:18:00", xid=79)
    msix = KernelEvent("msix_failed", "NVRM: GPU 0000:18:00.0: Failed to enable MSI-X.", pci="0000:18:00.0")
    narrow = Check("link_width", "fail", "link x8, expected x16")
    remap = Check("gate_row_remap", "fail", "remapped_rows_failure: a row remap failure")
    for r in (_r("failed", events=[xid79], recovered_by="flr"), _r("failed", events=[msix], recovered_by="flr"),
              _r("failed", checks=[narrow], findings=[Finding("link_width", "x8")], recovered_by="rebind"),
              _r("failed", checks=[remap], findings=[Finding("gate_row_remap", "failure")])):
        assert score.reliability(CLEAN + [r])[0] == score.HARDWARE
    again = _r("failed", findings=[Finding("recovery_timeout", "x")], recovered_by="flr")
    assert score.reliability(CLEAN + [again], before="quarantine")[0] == score.HARDWARE
    assert score.reliability(CLEAN + [again], before="churn-safe")[0] == score.LONG_JOBS_ONLY


def test_a_dead_function_is_not_a_degraded_link():
    gone = Check("link_width", "fail", "link x63, expected x16")  # all-ones config space
    r = _r("failed", checks=[gone], findings=[Finding("present", "gone")], recovered_by="bus_reset")
    assert score.reliability(CLEAN + [r])[0] == score.QUARANTINE_CLASS


def test_reboot_required_comes_first_and_the_node_takes_its_worst_class():
    dead = _r("failed", findings=[Finding("d3cold", "x")], events=[KernelEvent("xid", "79", xid=79)],
              recovered_by="reboot_required")
    assert score.reliability(CLEAN + [dead])[0] == score.REBOOT_CLASS
    assert score.worst([score.CHURN_SAFE, score.LONG_JOBS_ONLY]) == score.LONG_JOBS_ONLY
    assert score.worst([score.CHURN_SAFE, score.HARDWARE, score.QUARANTINE_CLASS]) == score.HARDWARE
    assert score.CLASS_DECISION[score.LONG_JOBS_ONLY] == score.ADMIT
    assert score.CLASS_DECISION[score.HARDWARE] == score.QUARANTINE
