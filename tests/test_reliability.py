"""The reliability classes (docs/verdict.md's table), one rule at a time, from cycles built here."""

from dataclasses import asdict

import pytest

from gpusoak import verify
from gpusoak.host import klog
from gpusoak.load import protocol
from gpusoak.load.child import CHILD_CRASHED, LoadSummary
from gpusoak.model import Check, CycleResult, Finding, KernelEvent
from gpusoak.verdict import score

OK = asdict(LoadSummary(0, protocol.OK, vram_bytes=1 << 20))  # a clean load check, as the journal holds it
WRONG = asdict(LoadSummary(10, protocol.WRONG, mismatched_words=3, vram_bytes=1 << 20))  # the GPU returned wrong data
NO_CHILD = asdict(LoadSummary(1, refusal=CHILD_CRASHED, error="no report"))  # gpusoak's own child broke


def _r(outcome="recovered", action="flr", cycle=1, findings=(), checks=(), events=(), recovered_by=None,
       load=None, post_check=None):
    return CycleResult("run", "0000:18:00.0", "GPU-1", action, cycle, outcome, "2026-11-22T00:00:00Z", 1.0,
                       1.0 if outcome == "recovered" else None, tuple(findings), tuple(checks), tuple(events),
                       recovered_by=recovered_by, load=load, post_check=post_check)


CLEAN = [_r(cycle=c) for c in range(1, 151)]
LOADED = [_r(cycle=c, load=OK, post_check=OK) for c in range(1, 151)]  # loaded before each reset, checked after
# What a real "giving up" cycle holds (the simulator's flaky-flr, as journaled): the kernel's line,
# nvidia's failed init of the function that did not answer, the reset write's ENOTTY, the checks.
GAVE_UP = [Finding("flr_not_ready", "nvidia 0000:18:00.0: not ready 65535ms after FLR; giving up"),
           Finding("rminit_failed", "NVRM: GPU 0000:18:00.0: RmInitAdapter failed! (0x26:0x56:1482)"),
           Finding("reset_write_failed", "flr reset: Inappropriate ioctl for device [ENOTTY]"),
           Finding("driver", "bound to no driver, expected nvidia"), Finding("link_width", "link x63, expected x16"),
           Finding("nvml", "NVML: not_found")]


def _gave_up(cycle, findings=GAVE_UP, recovered_by="flr", load=OK, post_check=OK):
    """A cycle whose FLR gave up, that the ladder's rung brought back and post-checked."""
    return _r("failed", cycle=cycle, findings=findings, recovered_by=recovered_by, load=load, post_check=post_check)


def _with(cycles, failed_at, **kw):
    """``cycles`` loaded cycles, those in ``failed_at`` a giving-up FLR the first rung cured."""
    return [_gave_up(c, **kw) if c in failed_at else _r(cycle=c, load=OK, post_check=OK) for c in range(1, cycles + 1)]


def test_churn_safe_needs_every_applicable_action_reliable():
    assert score.reliability(CLEAN, {"flr": "reliable", "bus_reset": "not_applicable"})[0] == score.CHURN_SAFE
    cls, why = score.reliability(CLEAN, {"flr": "reliable", "module_reload": "untested"})
    assert cls == score.UNPROVEN and "module_reload" in why[0]
    assert score.reliability(CLEAN, {"flr": "undecided"})[0] == score.UNPROVEN


def test_without_a_sequential_test_the_wilson_rule_decides():
    assert score.reliability(CLEAN)[0] == score.CHURN_SAFE
    assert score.reliability(CLEAN[:3])[0] == score.UNPROVEN


def test_failures_the_first_rung_fixed_with_nothing_fatal_are_long_jobs_only():
    flaky = LOADED + [_gave_up(151)]
    cls, why = score.reliability(flaky, {"flr": "unreliable"})
    assert cls == score.LONG_JOBS_ONLY and "brought back by flr" in why[0]
    # Only a reset that did not finish: a GPU that came back and dropped again, that NVML called
    # lost, or that timed out recovering is not the field's long-jobs GPU, whatever cured it.
    for reason in ("recovery_did_not_hold", "nvml", "recovery_timeout", "driver"):
        other = LOADED + [_r("failed", cycle=151, findings=[Finding(reason, "x")], recovered_by="flr",
                             load=OK, post_check=OK)]
        cls, why = score.reliability(other, {"flr": "unreliable"})
        assert cls == score.QUARANTINE_CLASS and "not a reset that did not finish" in why[0], reason


def test_a_giving_up_the_first_rung_cures_with_clean_loads_is_long_jobs_only_and_admitted_for_long_jobs():
    cls, why = score.reliability(_with(60, {51}), {"flr": "undecided"})
    assert cls == score.LONG_JOBS_ONLY, why
    assert "1 of 60 attempted cycles failed" in why[0] and "below 8.9%" in why[0]
    assert score.CLASS_DECISION[cls] == score.ADMIT_LONG_JOBS_ONLY != score.ADMIT
    assert score.ADMIT_LONG_JOBS_ONLY in score.DECISIONS


def test_the_wilson_upper_bound_and_the_cycles_long_jobs_only_needs():
    assert score.wilson_upper_bound(0, 0) == 1.0
    for k, n in ((0, 35), (1, 53), (2, 69), (3, 84), (5, 113)):
        assert score.wilson_upper_bound(k, n) == pytest.approx(1 - score.wilson_lower_bound(n - k, n))
        # The least n for k failures that bounds the rate below 10 % (docs/verdict.md's table).
        assert score.wilson_upper_bound(k, n) < 0.10 <= score.wilson_upper_bound(k, n - 1)
    # The acceptance profile's cap of 300 cycles bounds 19 failures, not 20.
    assert score.wilson_upper_bound(19, 300) < 0.10 <= score.wilson_upper_bound(20, 300)
    assert score.reliability(_with(53, {41}))[0] == score.LONG_JOBS_ONLY
    cls, why = score.reliability(_with(52, {41}))  # the interval straddles the limit: more cycles would tell
    assert cls == score.UNPROVEN and "may be up to 10.1%" in why[0], why


def test_a_gpu_that_gives_up_too_often_is_quarantine_however_its_retries_went():
    often = {3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36}  # 12 of 40: at least 17.6 % (Wilson lower bound)
    cls, why = score.reliability(_with(40, often), {"flr": "unreliable"})
    assert cls == score.QUARANTINE_CLASS and "12 of 40 attempted cycles failed" in why[0], why
    # 4 in 40 or 1 in 20 neither bounds the rate below 10 % nor shows it above: too few cycles.
    for cycles, failed in ((40, {3, 9, 17, 30}), (20, {20})):
        assert score.reliability(_with(cycles, failed), {"flr": "unreliable"})[0] == score.UNPROVEN


def test_a_giving_up_with_more_than_the_reset_path_is_quarantine():
    xid119 = Finding("xid_119", "NVRM: Xid (PCI:0000:18:00): 119, Timeout after 6s of waiting for RPC response")
    pending = Finding("flr_failed", "timed out waiting for pending transaction; performing function level reset anyway")
    rminit = Finding("rminit_failed", "NVRM: GPU 0000:18:00.0: RmInitAdapter failed! (0x26:0x56:1482)")
    for findings in ([*GAVE_UP, xid119], [pending, Finding("recovery_timeout", "x")], [rminit],
                     [Finding("d3cold", "x")], [Finding("aer", "Uncorrectable (Fatal)")]):
        cls, why = score.reliability(_with(120, {60}, findings=findings))
        assert cls == score.QUARANTINE_CLASS and "fatal event" in why[0], (findings, why)
    # Recovered only by a deeper rung, or by none: quarantine however rare.
    assert score.reliability(_with(120, {60}, recovered_by="rebind"))[0] == score.QUARANTINE_CLASS
    assert score.reliability(_with(120, {60}, recovered_by=None))[0] == score.QUARANTINE_CLASS


def test_long_jobs_only_needs_clean_load_checks_before_and_after_the_cure():
    # No load at all: whether it runs clean was not looked at.
    unloaded = [_gave_up(c, load=None, post_check=None) if c == 60 else _r(cycle=c) for c in range(1, 121)]
    cls, why = score.reliability(unloaded)
    assert cls == score.UNPROVEN and "no load checked it before the reset (none ran)" in why[0], why
    # gpusoak's own child could not look after the cure (and no cycle came after): not the GPU's
    # failure, and not shown either.
    cls, why = score.reliability(_with(60, {60}, post_check=NO_CHILD))
    assert cls == score.UNPROVEN and "after flr brought it back (load_check_child_crashed)" in why[0], why
    # The cure's post-check found wrong data: it does not run clean.
    cls, why = score.reliability(_with(120, {60}, post_check=WRONG))
    assert cls == score.QUARANTINE_CLASS and "load_check_memory_mismatch" in why[0], why
    # Without the ladder's post-check, the next cycle's load is the check after; here it failed (the
    # next cycle is refused, its load charged to this one): quarantine.
    cycles = _with(120, {60}, post_check=None)
    cycles[60] = _r("refused", cycle=61, load=WRONG,
                    findings=[Finding("load_failed_after_previous_cycle", "x"), Finding("load_memory_mismatch", "3")])
    cls, why = score.reliability(cycles)
    assert cls == score.QUARANTINE_CLASS and "the load check after flr brought it back failed" in why[0], why
    cycles[60] = _r(cycle=61, load=OK, post_check=OK)
    assert score.reliability(cycles)[0] == score.LONG_JOBS_ONLY


def test_the_verdict_and_the_cycle_judge_one_list_of_fatal_events():
    events = [KernelEvent(kind, "x") for kind in klog.KINDS if kind not in ("xid", "aer")]
    events += [KernelEvent("aer", "x", severity=s) for s in ("corrected", "nonfatal", "fatal")]
    events += [KernelEvent("xid", "x", xid=n) for n in (13, 43, 45, 48, 63, 79, 119, 999)]
    for e in events:
        if e.kind != "aer":
            assert verify.is_fatal_reason(verify.event_reason(e)) == verify.is_fatal(e), e
    # Only an uncorrectable AER becomes a finding, so a finding "aer" is a fatal one.
    assert verify.is_fatal_reason("aer") and [e.severity for e in events if verify.is_fatal(e) and e.kind == "aer"] \
        == ["nonfatal", "fatal"]
    # A fatal event the old second list left out (a transaction still pending at the FLR) no longer
    # passes as a mere reset failure.
    pending = Finding("flr_failed", "timed out waiting for pending transaction; performing function level reset anyway")
    assert score.reliability(_with(120, {60}, findings=[pending]))[0] == score.QUARANTINE_CLASS


def test_quarantine_for_a_deeper_rung_a_fatal_event_a_hang_a_gate_or_a_wrong_result():
    cases = [
        _r("failed", findings=[Finding("recovery_timeout", "x")], recovered_by="bus_reset"),
        _r("failed", findings=[Finding("flr_not_ready", "not ready 65535ms after FLR; giving up")], recovered_by="rebind"),
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
    narrow = Check("link_width", "fail", "link x8, expected x16", expected=16, actual=8)
    slow = Check("link_speed", "fail", "link 16.0 GT/s PCIe under load, expected 32.0 GT/s PCIe", expected=32.0, actual=16.0)
    remap = Check("gate_row_remap_failure", "fail", "row remap failure: the GPU could not remap a row")
    for r in (_r("failed", events=[xid79], recovered_by="flr"), _r("failed", events=[msix], recovered_by="flr"),
              _r("failed", checks=[narrow], findings=[Finding("link_width", "x8")], recovered_by="rebind"),
              _r("failed", checks=[slow], findings=[Finding("link_speed", "16.0")], recovered_by="rebind"),
              _r("failed", checks=[remap], findings=[Finding("gate_row_remap_failure", "x")]),
              _r("skipped", findings=[Finding("health_gate", "health_gate: row_remap_failure: ..."),
                                      Finding("gate_row_remap_failure", "row remap failure")])):
        assert score.reliability(CLEAN + [r])[0] == score.HARDWARE
    again = _gave_up(151)
    assert score.reliability(LOADED + [again], before="quarantine")[0] == score.HARDWARE
    assert score.reliability(LOADED + [again], before="churn-safe")[0] == score.LONG_JOBS_ONLY


def test_a_dead_function_is_not_a_degraded_link():
    gone = Check("link_width", "fail", "link x63, expected x16", expected=16, actual=63)  # all-ones config space
    unknown = Check("link_speed", "fail", "link Unknown under load, expected 32.0 GT/s PCIe", expected=32.0)
    for c in (gone, unknown):
        r = _r("failed", checks=[c], findings=[Finding("present", "gone")], recovered_by="bus_reset")
        assert score.reliability(CLEAN + [r])[0] == score.QUARANTINE_CLASS
    # The verdict reads the compared values, never the message: the same words without them say nothing.
    prose = Check("link_width", "fail", "link x8, expected x16")
    r = _r("failed", checks=[prose], findings=[Finding("link_width", "x8")], recovered_by="bus_reset")
    assert score.reliability(CLEAN + [r])[0] == score.QUARANTINE_CLASS


def test_reboot_required_comes_first_and_the_node_takes_its_worst_class():
    dead = _r("failed", findings=[Finding("d3cold", "x")], events=[KernelEvent("xid", "79", xid=79)],
              recovered_by="reboot_required")
    assert score.reliability(CLEAN + [dead])[0] == score.REBOOT_CLASS
    assert score.worst([score.CHURN_SAFE, score.LONG_JOBS_ONLY]) == score.LONG_JOBS_ONLY
    assert score.worst([score.CHURN_SAFE, score.HARDWARE, score.QUARANTINE_CLASS]) == score.HARDWARE
    assert score.CLASS_DECISION[score.LONG_JOBS_ONLY] == score.ADMIT_LONG_JOBS_ONLY
    assert score.CLASS_DECISION[score.HARDWARE] == score.QUARANTINE


def test_an_early_cured_giving_up_keeps_cycling_until_its_rate_is_bounded():
    # One "giving up" at cycle 3 makes the sequential test call the GPU unreliable at once, after 3
    # cycles, where no failure rate can be bounded: the GPU would be quarantine for being unlucky
    # early. A sequence whose failures were all cured at the first rung cycles on until the Wilson
    # interval of its rate lies below (53 cycles with one failure) or above the 10 % limit.
    from gpusoak.schedule import Plan, Sequence
    from gpusoak.verdict.sprt import SprtParams

    params = SprtParams()
    plan = Plan(actions=("flr",), sequential=params)
    cured = Sequence.start("0000:18:00.0", "flr", params)
    cycles = [_r(cycle=c, load=OK, post_check=OK) for c in (1, 2)] + [_gave_up(3)]
    for r in cycles:
        cured.record(r)
    assert cured.test.decision == "unreliable" and not cured.done(plan)  # decided for churn, not for long jobs
    c = 3
    while not cured.done(plan):
        c += 1
        r = _r(cycle=c, load=OK, post_check=OK)
        cycles.append(r)
        cured.record(r)
    assert cured.stopped == "bounded" and cured.attempts == 53 and cured.failures == 1
    assert score.reliability(cycles)[0] == score.LONG_JOBS_ONLY
    # Not so for a failure that needed more than the first rung: it decides at once.
    deep = Sequence.start("0000:18:00.0", "flr", params)
    for r in [_r(cycle=1), _gave_up(2, recovered_by="bus_reset")]:
        deep.record(r)
    assert deep.done(plan) and deep.stopped == "decided"
    # And a cured one that fails too often stops once its rate is surely above the limit.
    often = Sequence.start("0000:18:00.0", "flr", params)
    n = 0
    while not often.done(plan):
        n += 1
        often.record(_gave_up(n) if n % 3 == 0 else _r(cycle=n, load=OK, post_check=OK))
    assert often.stopped == "bounded" and n < 60 and score.wilson_lower_bound(often.failures, often.attempts) >= 0.10
