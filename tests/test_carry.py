"""Evidence that carries over from night to night (gpusoak/carry.py): which earlier runs count, and
how the sequential test goes on from them. Each night is a journal's content made here and turned
into result.json by the code every run uses (result_json.build over report.build.verdict_of), so
the history is in the real format, and each night's header carries what carry.carry found in the
nights before it."""

import json

from gpusoak import carry, journal
from gpusoak import history as history_file
from gpusoak.actions import ACTION_SEMANTICS
from gpusoak.carry import Carried
from gpusoak.model import CycleResult, Finding
from gpusoak.report import build, result_json
from gpusoak.schedule import Plan, Sequence
from gpusoak.verdict import trends
from gpusoak.verdict.sprt import SprtParams

BDF, UUID, NODE = "0000:18:00.0", "GPU-1", "node-1"
DRIVER, KERNEL = "570.124.06", "6.8.0-48-generic"
NIGHTLY = SprtParams(cap=1000)  # gpusoak/profiles/nightly.toml


def _cycle(run_id, cycle, failed=False, bdf=BDF, uuid=UUID):
    if failed:  # a reset that left the GPU not ready (a fatal event), brought back by the first rung
        return CycleResult(run_id, bdf, uuid, "flr", cycle, "failed", "2026-11-01T02:00:00Z", 70.0, None,
                           (Finding("flr_not_ready", "not ready 65535ms after FLR; giving up"),), recovered_by="flr")
    return CycleResult(run_id, bdf, uuid, "flr", cycle, "recovered", "2026-11-01T02:00:00Z", 12.0, 1.0)


def _night(day, folder, cycles=12, fails=(), driver=DRIVER, kernel=KERNEL, node=NODE, uuid=UUID, bdf=BDF,
           semantics=None):
    """One night: what carry.carry finds in the folder, then the night's cycles, as result.json."""
    run_id, started = f"night-{day:02d}", f"2026-11-{day:02d}T02:00:00.000+00:00"
    semantics = dict(ACTION_SEMANTICS if semantics is None else semantics)
    history = history_file.load([folder]) if folder.is_dir() else trends.History()
    found = carry.carry(history, folder, node, driver, kernel, semantics, [(bdf, uuid)], ("flr",), NIGHTLY)
    header = {"run_id": run_id, "started_at": started, "hostname": node, "node_name": node, "kernel": kernel,
              "driver": driver, "actions_semantics": semantics, "gpus": [{"bdf": bdf, "uuid": uuid}],
              "profile": {"name": "nightly", "decision": "standard", "trends": True, "history": str(folder),
                          "plan": {"actions": ["flr"], "cycles": NIGHTLY.cap, "sequential": NIGHTLY.to_dict()}},
              "carried": found.to_dict()}
    content = journal.JournalContent(header, [_cycle(run_id, c, c in fails, bdf, uuid) for c in range(1, cycles + 1)])
    doc = result_json.build(content, build.verdict_of(content))
    folder.mkdir(exist_ok=True)
    (folder / f"{run_id}.json").write_text(json.dumps(doc))
    return doc


def _flr(doc):
    return doc["gpus"][0]["sequences"]["flr"]


def test_nights_add_up_until_the_test_decides_and_the_decision_stands_until_a_failure(tmp_path):
    h = tmp_path / "history"
    nights = [_night(d, h) for d in range(1, 13)]  # twelve nights of twelve clean cycles
    assert [_flr(n)["carried"]["attempts"] for n in nights] == [12 * i for i in range(12)]
    assert _flr(nights[0])["carried"]["runs"] == 0 and "no earlier run of node-1" in _flr(nights[0])["carried"]["reason"]
    last = _flr(nights[-1])
    assert last["carried"] == {**last["carried"], "runs": 11, "attempts": 132, "failures": 0,
                               "since": "2026-11-01T02:00:00.000+00:00"}
    assert last["sprt"]["cycles"] == 144 and last["outcome"] == "undecided"  # one test over the nights
    # The thirteenth night decides, six cycles in: 150 clean cycles in all.
    n13 = _night(13, h)
    assert _flr(n13)["outcome"] == "reliable" and _flr(n13)["attempts"] == 6 and _flr(n13)["sprt"]["cycles"] == 150
    assert n13["gpus"][0]["reliability"]["class"] == "churn-safe" and n13["node"]["decision"] == "admit"
    assert any("144 attempts (0 failed) carried from 12 earlier run(s)" in r
               for r in n13["gpus"][0]["reliability"]["reasons"])
    # The test has ended: the next night opens a new one, and the decision stands while it is clean.
    n14 = _night(14, h)
    assert _flr(n14)["carried"]["attempts"] == 0 and _flr(n14)["carried"]["standing"] == "night-13"
    assert _flr(n14)["sprt"]["cycles"] == 12 and _flr(n14)["outcome"] == "reliable"
    assert n14["gpus"][0]["reliability"]["class"] == "churn-safe"
    # A failure ends the standing decision; early in the new test it rejects at once (a failure the
    # first rung cured: the night cycles on to bound its rate, schedule.Sequence.done).
    n15 = _night(15, h, fails=(5,))
    # One failure in 12 cycles bounds the rate neither below nor above 10 %: inconclusive, never admitted.
    assert _flr(n15)["outcome"] == "unreliable" and n15["gpus"][0]["reliability"]["class"] == "inconclusive"
    # An unreliable test never closes: the next night starts decided, resets nothing (no cycle ran),
    # and the GPU cannot be churn-safe.
    n16 = _night(16, h, cycles=0)
    assert _flr(n16)["carried"] == {**_flr(n16)["carried"], "runs": 2, "attempts": 24, "failures": 1}
    assert _flr(n16)["outcome"] == "unreliable" and _flr(n16)["stopped"] == "decided"
    assert n16["gpus"][0]["reliability"]["class"] == "inconclusive" and n16["node"]["decision"] == "retest"
    assert any("flr unreliable: 24 attempts (1 failed) carried" in r for r in n16["gpus"][0]["reliability"]["reasons"])


def test_a_driver_or_kernel_change_starts_afresh_and_runs_before_it_never_count_again(tmp_path):
    h = tmp_path / "history"
    _night(1, h)
    _night(2, h)
    assert _flr(_night(3, h, driver="580.65.06"))["carried"]["attempts"] == 0
    back = _flr(_night(4, h))  # back on the first driver: nights 1 and 2 are before a change
    assert back["carried"]["attempts"] == 0
    assert "nothing carried: run night-03 (2026-11-03T02:00:00.000+00:00) had driver 580.65.06" in back["carried"]["reason"]
    assert _flr(_night(5, h))["carried"]["attempts"] == 12  # night 4 only
    new_kernel = _flr(_night(6, h, kernel="6.12.0-1-amd64"))
    assert new_kernel["carried"]["attempts"] == 0 and "kernel 6.8.0-48-generic" in new_kernel["carried"]["reason"]


def test_only_this_node_this_gpu_and_the_same_meaning_count(tmp_path):
    h = tmp_path / "history"
    _night(1, h, cycles=50, fails=(45,))  # late in the test: a failure that leaves it undecided
    _night(2, h, node="node-2")  # another node's night in the same folder
    _night(3, h, uuid="GPU-2")  # another GPU in this slot: a replaced board
    mine = _flr(_night(4, h))["carried"]
    assert (mine["runs"], mine["attempts"], mine["failures"]) == (1, 50, 1)  # the failure is carried
    # A GPU whose UUID NVML could not read is matched by its PCI address.
    _night(5, tmp_path / "no-uuid", uuid=None)
    assert _flr(_night(6, tmp_path / "no-uuid", uuid=None))["carried"]["attempts"] == 12
    # flr meant something else in an earlier run: nothing before it counts.
    old = tmp_path / "old"
    _night(7, old, semantics={**ACTION_SEMANTICS, "flr": 1})
    _night(8, old)
    now = _flr(_night(9, old))["carried"]
    assert now["attempts"] == 12 and "flr meant something else in run night-07" in now["reason"]


def test_a_history_that_cannot_be_read_whole_carries_nothing(tmp_path):
    h = tmp_path / "history"
    _night(1, h)
    (h / "torn.json").write_text("{ not json")
    got = _flr(_night(2, h))["carried"]
    assert got["attempts"] == 0 and "1 file(s) of the history could not be read" in got["reason"]


def test_carried_failures_count_and_carried_attempts_count_toward_the_cap():
    plan = Plan(actions=("flr",), sequential=NIGHTLY)
    clean = Sequence.start(BDF, "flr", NIGHTLY, Carried(runs=5, attempts=60, failures=0))
    failed = Sequence.start(BDF, "flr", NIGHTLY, Carried(runs=5, attempts=60, failures=1))
    for c in range(1, 91):
        for s in (clean, failed):
            if not s.done(plan):
                s.record(_cycle("now", c))
    assert clean.outcome == "reliable" and clean.attempts == 90 and clean.test.cycles == 150
    assert failed.outcome == "undecided" and failed.test.failures == 1  # a carried failure sets it back
    capped = Plan(actions=("flr",), sequential=SprtParams(cap=300))
    late = Sequence.start(BDF, "flr", capped.sequential, Carried(runs=20, attempts=295, failures=1))
    for c in range(1, 20):
        if not late.done(capped):
            late.record(_cycle("now", c))
    assert late.attempts == 5 and late.stopped == "cap" and late.test.cycles == 300


def test_carried_evidence_alone_never_passes_a_gpu():
    # Totals that already decide (the test's parameters changed since): no cycle tonight, no pass.
    s = Sequence.start(BDF, "flr", NIGHTLY, Carried(runs=20, attempts=200, failures=0))
    assert s.test.outcome == "reliable" and s.outcome == "undecided" and s.done(Plan(("flr",), NIGHTLY))
    # A standing reliable decision needs a clean attempt in this run too.
    standing = Sequence.start(BDF, "flr", NIGHTLY, Carried(standing="night-13"))
    assert standing.outcome == "undecided"
    standing.record(_cycle("now", 1))
    assert standing.outcome == "reliable"
    standing.record(_cycle("now", 2, failed=True))
    assert standing.outcome == "unreliable"
    # carry.carry itself starts a new test where the totals would already end this one.
    h = trends.History(runs=[{"run": {"run_id": "n1", "started_at": "2026-11-01T02:00:00Z"},
                              "node": {"name": NODE, "driver": DRIVER, "kernel": KERNEL},
                              "gpus": [{"bdf": BDF, "uuid": UUID, "sequences": {"flr": {
                                  "attempts": 200, "failures": 0, "outcome": "undecided", "stopped": "unfinished",
                                  "sprt": {"decision": "undecided"}}}}]}])
    got = carry.carry(h, "h", NODE, DRIVER, KERNEL, dict(ACTION_SEMANTICS), [(BDF, UUID)], ("flr",), NIGHTLY)
    assert got.sequences[(BDF, "flr")].attempts == 0 and "a new test starts" in got.sequences[(BDF, "flr")].reason
