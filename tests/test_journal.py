import json

import pytest

from gpusoak import journal
from gpusoak.errors import JournalError
from gpusoak.model import CycleResult


def _result(cycle, outcome="recovered"):
    return CycleResult(run_id="r", bdf="0000:65:00.0", uuid="GPU-1", action="flr", cycle=cycle,
                       outcome=outcome, started_at="2026-01-01T00:00:00Z", duration_s=0.5,
                       recovery_s=0.5 if outcome == "recovered" else None)


def test_round_trip(tmp_path):
    j = journal.Journal(tmp_path / "j.jsonl", {"run_id": "r", "hostname": "n1"})
    for c in (1, 2):
        j.append(_result(c))
    j.close()
    content = journal.read(tmp_path / "j.jsonl")
    assert content.header["hostname"] == "n1" and content.header["schema"] == journal.JOURNAL_SCHEMA
    assert [r.cycle for r in content.results] == [1, 2] and content.problems == []


def test_each_line_is_on_disk_before_append_returns(tmp_path):
    path = tmp_path / "j.jsonl"
    j = journal.Journal(path, {"run_id": "r"})
    j.append(_result(1))
    # Read through another file object while the journal is still open.
    assert len(path.read_text().splitlines()) == 2
    j.close()


def test_a_line_cut_short_by_a_kill_is_reported_not_fatal(tmp_path):
    path = tmp_path / "j.jsonl"
    j = journal.Journal(path, {"run_id": "r"})
    j.append(_result(1))
    j.close()
    with open(path, "a") as f:
        f.write(json.dumps({"type": "cycle", **_result(2).to_dict()})[:40])
    content = journal.read(path)
    assert [r.cycle for r in content.results] == [1]
    assert len(content.problems) == 1 and "cut short" in content.problems[0]


def test_reopening_appends_without_a_second_header(tmp_path):
    path = tmp_path / "j.jsonl"
    journal.Journal(path, {"run_id": "r"}).close()
    j = journal.Journal(path, {"run_id": "other"})
    j.append(_result(1))
    j.close()
    content = journal.read(path)
    assert content.header["run_id"] == "r" and len(content.results) == 1


def test_not_a_journal(tmp_path):
    (tmp_path / "x").write_text('{"type": "cycle"}\n')
    with pytest.raises(JournalError, match="no run header"):
        journal.read(tmp_path / "x")
    with pytest.raises(JournalError, match="cannot read"):
        journal.read(tmp_path / "missing")


def test_full_disk_is_a_clear_error_that_keeps_what_was_written(tmp_path):
    j = journal.Journal(tmp_path / "j.jsonl", {"run_id": "r"})
    j.append(_result(1))
    # /dev/full answers every write with ENOSPC, as a full disk does.
    j._file.close()
    j._file = open("/dev/full", "a")  # noqa: SIM115
    with pytest.raises(JournalError) as err:
        j.append(_result(2))
    assert "No space left on device" in str(err.value)
    assert "the 1 cycles before this one are safe" in str(err.value)
    assert [r.cycle for r in journal.read(tmp_path / "j.jsonl").results] == [1]


def test_a_continued_journal_ends_a_line_cut_short_before_its_first_new_record(tmp_path):
    # A run killed mid-line, continued with --resume: the new record must not join the cut one.
    path = tmp_path / "j.jsonl"
    j = journal.Journal(path, {"run_id": "r"})
    j.append(_result(1))
    j.close()
    with open(path, "a") as f:
        f.write('{"type":"cycle","run_id":"r","bdf":"0000:65')
    j = journal.Journal(path, {"run_id": "r"})
    j.append(_result(2))
    j.close()
    content = journal.read(path)
    assert [r.cycle for r in content.results] == [1, 2]
    assert len(content.problems) == 1 and "unreadable" in content.problems[0]


def test_the_header_and_the_last_record_are_read_without_the_cycles(tmp_path):
    path = tmp_path / "j.jsonl"
    j = journal.Journal(path, {"run_id": "r7"})
    j.append(_result(1))
    assert journal.header_of(path)["run_id"] == "r7" and journal.last_record_type(path) == "cycle"
    j.note({"type": "restore", "changes": []})
    j.close()
    assert journal.last_record_type(path) == "restore"
    with open(path, "a") as f:
        f.write('{"type":"cy')  # killed while writing: no whole last record
    assert journal.last_record_type(path) is None
    (tmp_path / "other").write_text('{"type": "cycle"}\n')
    assert journal.header_of(tmp_path / "other") is None and journal.header_of(tmp_path / "none") is None
