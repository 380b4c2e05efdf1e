"""One table says what every refusal means for the verdict (gpusoak/verdict/refusals.py): the
sequence's outcome, the GPU's class and a profile's plan all read it."""

from gpusoak import mig, soak
from gpusoak.actions import base
from gpusoak.model import REFUSED, CycleResult, Finding
from gpusoak.schedule import Plan, Sequence, supported_actions
from gpusoak.sim import open_sim_node
from gpusoak.soak import SoakOptions
from gpusoak.verdict import refusals, score

EVERY_REFUSAL = [
    base.NOT_ROOT, base.HELD, base.UNSUPPORTED, base.NOT_PRESENT, base.NOT_AUTHORISED, base.DISPLAY,
    base.SHARED_DOMAIN, base.MODULE_IN_USE, base.FABRIC_MANAGER, base.FABRIC_BYPASS, base.SERVICE_ACTIVE,
    base.FABRIC_SERVICE, base.NOT_BOUND, base.IOMMU, base.MODULE_NOT_LOADED, base.DRIVER_SHARED,
    base.DRIVER_MISMATCH, base.CANNOT_RELOAD, base.HELD_BY_MODULE, base.IN_USE, base.BUS_BUSY,
    base.CANNOT_LOOK, mig.MIG_ENABLED, mig.MIG_MODE_PENDING, mig.MIG_UNKNOWN, soak.SELF_HELD,
]


def _refused(reason, action="bus_reset", cycle=1):
    return CycleResult(run_id="r", bdf="0000:9a:00.0", uuid=None, action=action, cycle=cycle, started_at="",
                       outcome=REFUSED, duration_s=0.0, findings=(Finding(reason, "why"),))


def _recovered(action="flr", cycle=1):
    return CycleResult(run_id="r", bdf="0000:9a:00.0", uuid=None, action=action, cycle=cycle, started_at="",
                       outcome="recovered", duration_s=1.0, recovery_s=1.0)


def test_every_refusal_reason_the_code_gives_has_its_meaning_in_the_table():
    assert sorted(set(EVERY_REFUSAL) - set(refusals.TABLE)) == []
    assert refusals.meaning("a reason nobody classed") == refusals.RETEST
    # And the reasons the code defines, found in the action modules themselves (not a list kept
    # here): every reason-like constant is in the table but sysfs file names and the names of
    # checks and failures, which are no refusal.
    import importlib
    import pkgutil
    import re

    import gpusoak.actions as actions_pkg

    not_refusals = {"driver_override", "remove", "reset", "reset_method", "bind_back_failed",
                    "driver_override_mismatch", "fail", "pass", "mig_layout"}
    modules = [importlib.import_module(f"gpusoak.actions.{m.name}") for m in pkgutil.iter_modules(actions_pkg.__path__)]
    found = {v for mod in [*modules, mig] for k, v in vars(mod).items()
             if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z][a-z_0-9]*", v)}
    assert sorted(found - set(refusals.TABLE) - not_refusals) == []


def test_the_sequence_and_the_gpu_class_read_the_same_table():
    for reason in EVERY_REFUSAL:
        seq = Sequence("0000:9a:00.0", "bus_reset")
        seq.record(_refused(reason))
        seq.done(Plan(actions=("bus_reset",), cycles=3))
        results = [_recovered(cycle=c) for c in range(1, 21)] + [_refused(reason, cycle=c) for c in (1, 2, 3)]
        gpu = score.classify_gpu("0000:9a:00.0", None, results)
        if refusals.not_applicable(reason):
            assert seq.outcome == "not_applicable" and gpu.gpu_class == score.PASS, reason
        else:
            assert seq.outcome == "untested" and gpu.gpu_class == score.INCONCLUSIVE, reason


def test_a_topology_refusal_rules_the_action_out_for_the_class_as_for_the_sequence():
    # A bus reset that would also reset the neighbour behind the same switch port is the slot's
    # wiring, on every run: the GPU is judged on the resets it can have (it was inconclusive here,
    # while a profile's sequence called the same action not applicable).
    results = [_recovered(cycle=c) for c in range(1, 21)] + [_refused(base.SHARED_DOMAIN, cycle=c) for c in (1, 2)]
    assert score.classify_gpu("0000:9a:00.0", None, results).gpu_class == score.PASS


def test_a_profile_keeps_an_action_refused_for_the_moment_in_its_plan():
    # A GPU service that runs (--keep-services) refuses the module reload on this node now; the
    # profile must still plan it, so that its refused cycles show and the node is not admitted
    # as if driver reload had been tested. An action the build rules out is left out.
    sim = open_sim_node("mixed-fleet/node-d")  # something outside gpusoak keeps nvidia in use
    try:
        gpus = sim.node.gpus()
        ctx = SoakOptions(actions=("flr", "module_reload"), destructive=True).context_for(gpus)
        assert supported_actions(sim.node, gpus, ctx, ("flr", "module_reload")) == ("flr", "module_reload")
    finally:
        sim.node.close()
    hgx = open_sim_node("hgx-h100-nvswitch")  # sysfs resets bypass Fabric Manager there
    try:
        gpus = hgx.node.gpus()
        ctx = SoakOptions(actions=("flr", "gpu_reset"), destructive=True).context_for(gpus)
        assert supported_actions(hgx.node, gpus, ctx, ("flr", "bus_reset", "gpu_reset")) == ("gpu_reset",)
    finally:
        hgx.node.close()


def test_the_reliability_class_reads_the_table_as_the_gpu_class_does():
    # 20 clean flr cycles and a bus reset the slot's wiring rules out: class pass, and the
    # reliability class of the same run churn-safe (it said "too few cycles" while the node was admitted).
    results = [_recovered(cycle=c) for c in range(1, 21)] + [_refused(base.SHARED_DOMAIN, cycle=c) for c in (1, 2)]
    assert score.classify_gpu("0000:9a:00.0", None, results).gpu_class == score.PASS
    assert score.reliability(results)[0] == score.CHURN_SAFE
    held = [_recovered(cycle=c) for c in range(1, 21)] + [_refused(base.HELD, cycle=c) for c in (1, 2)]
    assert score.reliability(held)[0] == score.UNPROVEN
