"""The coverage rules (gpusoak/verdict/inventory.py) and the inventory file (gpusoak/inventory.py)."""

import json

import pytest

from gpusoak import inventory as inventory_file
from gpusoak.errors import GpusoakError
from gpusoak.model import GpuVerdict, Verdict
from gpusoak.verdict import inventory, score

A, B, C = "0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0"


def _admitted(decided_by="fixed"):
    g = GpuVerdict(A, None, score.PASS, {})
    return Verdict("n", score.ADMIT, (g,), ("all 1 GPUs recovered from every cycle",), "churn-safe", decided_by)


def _header(found, tested, previous=None):
    return {"gpus": [{"bdf": b} for b in tested],
            "inventory": {"found": found, "previous": None if previous is None else {"source": "f", "gpus": previous}}}


def test_a_journal_from_before_the_inventory_keeps_its_verdict():
    assert inventory.coverage({"gpus": [{"bdf": A}]}) is None
    assert inventory.apply(_admitted(), None) == _admitted()


def test_a_full_run_admits_a_subset_does_not_and_a_missing_gpu_quarantines():
    full = inventory.coverage(_header([A], [A], previous=[A]))
    assert inventory.apply(_admitted(), full).decision == score.ADMIT
    part = inventory.coverage(_header([A, B], [A]))
    assert inventory.apply(_admitted(), part).decision == score.SUBSET
    lost = inventory.apply(_admitted(), inventory.coverage(_header([A], [A], previous=[A, C])))
    assert lost.decision == score.QUARANTINE and lost.reliability == score.HARDWARE
    assert [g.bdf for g in lost.gpus if g.gpu_class == score.FAIL] == [C]
    assert not any(e.startswith("all ") for e in lost.evidence)  # "all GPUs recovered" is no longer true
    # A readmission keeps the node quarantined; a failed subset stays a quarantine, not a subset.
    assert inventory.apply(_admitted("readmission"), inventory.coverage(_header([A], [A], [A, C]))).decision \
        == score.KEEP_QUARANTINED
    failed = Verdict("n", score.QUARANTINE, (GpuVerdict(A, None, score.FAIL, {}),))
    assert inventory.apply(failed, part).decision == score.QUARANTINE


def test_a_subset_does_not_admit_for_long_jobs_only_either():
    g = GpuVerdict(A, None, score.FAIL, {}, reliability=score.LONG_JOBS_ONLY)
    long_jobs = Verdict("n", score.ADMIT_LONG_JOBS_ONLY, (g,), (), score.LONG_JOBS_ONLY, "acceptance")
    assert inventory.apply(long_jobs, inventory.coverage(_header([A, B], [A]))).decision == score.SUBSET
    assert inventory.apply(long_jobs, inventory.coverage(_header([A], [A]))).decision == score.ADMIT_LONG_JOBS_ONLY


def test_the_inventory_file_reads_back_and_refuses_what_it_cannot_read(tmp_path):
    path = tmp_path / "inventory.json"
    assert inventory_file.read(path) is None  # the node's first run
    inventory_file.write(path, "r1", "node", [{"bdf": A, "device": "0x2330"}])
    assert inventory_file.read(path)["gpus"] == [A]
    for bad in ("{", json.dumps({"gpus": [{"bdf": "not a bdf"}]}), json.dumps({"gpus": "x"}), "[]"):
        path.write_text(bad)
        with pytest.raises(GpusoakError, match="inventory"):
            inventory_file.read(path)
