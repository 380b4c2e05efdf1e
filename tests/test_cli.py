"""The gpusoak command's own behaviour (the run itself is tested end to end in tests/e2e)."""

import os
import signal

import pytest

from gpusoak import cli


def test_sigterm_stops_a_run_the_way_ctrl_c_does_so_the_node_is_put_back():
    # A pod deletion or a cancelled job sends SIGTERM; Python's default would end the process at
    # once. As KeyboardInterrupt, pytest ends the session and the plugin restores the node.
    before = signal.getsignal(signal.SIGTERM)
    try:
        cli._stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next statement
            pytest.fail("SIGTERM did not stop the run")
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.fixture
def no_pytest(monkeypatch):
    """`gpusoak run` with pytest.main replaced: a check that fires before it, fires before any cycle."""
    import pytest as pytest_mod

    def started(argv, *a, **k):
        raise AssertionError(f"pytest started: the option was not refused first ({argv})")

    monkeypatch.setattr(pytest_mod, "main", started)
    monkeypatch.setattr(cli, "_stop_on_sigterm", lambda: None)


NONSENSE = [
    ("--recovery-deadline", "-1"), ("--recovery-deadline", "0"), ("--recovery-deadline", "nan"),
    ("--recovery-deadline", "inf"), ("--write-timeout", "0"), ("--write-timeout", "-5"), ("--write-timeout", "nan"),
    ("--write-timeout", "1e300"), ("--settle", "-1"), ("--settle", "inf"), ("--settle", "4000"),
    ("--load-seconds", "-1"), ("--load-seconds", "nan"), ("--post-check-seconds", "-0.5"),
    ("--post-check-seconds", "inf"), ("--load-fraction", "0"), ("--load-fraction", "1.5"),
    ("--load-fraction", "nan"), ("--cycles", "100000000000"),
]


@pytest.mark.parametrize(("option", "value"), NONSENSE, ids=[f"{o}={v}" for o, v in NONSENSE])
def test_a_nonsense_option_is_refused_before_the_first_cycle(option, value, tmp_path, capsys, no_pytest):
    # Unchecked, --recovery-deadline -1 judged the node reboot_required and --write-timeout 0
    # quarantined it; --cycles 1e11 ran the machine out of memory before its first cycle.
    assert cli.main(["run", option, value, "--report-dir", str(tmp_path / "r")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"gpusoak: {option} ") and ("must be" in err or "not a finite" in err), err
    assert not (tmp_path / "r" / "journal.jsonl").exists()


def test_budget_and_seed_are_checked_against_the_other_options(tmp_path, capsys, no_pytest):
    out = str(tmp_path / "r")
    assert cli.main(["run", "--profile", "nightly", "--budget", "0", "--report-dir", out]) == cli.EXIT_USAGE
    assert "--budget" in capsys.readouterr().err
    assert cli.main(["run", "--profile", "nightly", "--budget", "9999h", "--report-dir", out]) == cli.EXIT_USAGE
    assert "--budget 9999h: must be at most 30 days" in capsys.readouterr().err
    # A seed on a real node was silently ignored: the run was not the one asked for.
    assert cli.main(["run", "--backend", "real", "--seed", "7", "--report-dir", out]) == cli.EXIT_USAGE
    assert "--seed 7: a real node has no simulator to seed" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--report-dir", "--metrics", "--history", "--inventory"])
def test_an_output_path_that_cannot_be_written_is_refused_before_the_first_cycle(option, tmp_path, capsys, no_pytest):
    # Under a regular file: no one can create it, root included (chmod does not stop root). The
    # metrics file used to fail only at the end of the soak; --history without a profile was never looked at.
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "sub"
    args = ["run", option, str(target / "x.json" if option in ("--metrics", "--inventory") else target)]
    if option != "--report-dir":
        args += ["--report-dir", str(tmp_path / "r")]
    assert cli.main(args) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"gpusoak: {option} ") and "cannot write in" in err and "Not a directory" in err, err


def test_a_report_folder_that_holds_an_earlier_run_is_refused(tmp_path, capsys, no_pytest):
    out = tmp_path / "r"
    out.mkdir()
    (out / "gpusoak.log").write_text("the task script's own log, written before gpusoak starts\n")
    (out / "journal.jsonl").write_text('{"type":"run","run_id":"20250101T000000Z-abcd","schema":"gpusoak.journal/1"}\n')
    before = (out / "journal.jsonl").read_bytes()
    assert cli.main(["run", "--report-dir", str(out)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{out} already holds run 20250101T000000Z-abcd" in err
    assert "give a new folder, or --resume 20250101T000000Z-abcd" in err
    assert (out / "journal.jsonl").read_bytes() == before
    # A folder with only a log in it is a fresh one: the check gets as far as starting pytest.
    (out / "journal.jsonl").unlink()
    with pytest.raises(AssertionError, match="pytest started"):
        cli.main(["run", "--report-dir", str(out)])


def test_resume_is_refused_where_there_is_no_such_run_or_for_a_profile(tmp_path, capsys, no_pytest):
    out = tmp_path / "r"
    assert cli.main(["run", "--resume", "20250101T000000Z-abcd", "--report-dir", str(out)]) == cli.EXIT_USAGE
    assert "holds no run to continue" in capsys.readouterr().err
    out.mkdir()
    (out / "journal.jsonl").write_text('{"type":"run","run_id":"20250101T000000Z-abcd","schema":"gpusoak.journal/1"}\n')
    assert cli.main(["run", "--resume", "other", "--report-dir", str(out)]) == cli.EXIT_USAGE
    assert "holds run 20250101T000000Z-abcd, not other" in capsys.readouterr().err
    assert cli.main(["run", "--profile", "acceptance", "--resume", "20250101T000000Z-abcd",
                     "--report-dir", str(out)]) == cli.EXIT_USAGE
    assert "only a run of fixed cycles can be continued" in capsys.readouterr().err
    # A run that saved the node's state and never wrote its restore record was killed mid-run:
    # continued, it would save the node as that run left it as the state to put back.
    (out / "state.json").write_text("{}")
    assert cli.main(["run", "--resume", "20250101T000000Z-abcd", "--report-dir", str(out)]) == cli.EXIT_USAGE
    assert "did not put the node back" in capsys.readouterr().err


def test_a_node_without_a_gpu_has_its_own_exit_status(tmp_path):
    from gpusoak.plugin import NO_GPU_STATUS

    # pytest's own statuses (0-5) never mean "no GPU": 3 is its internal error.
    assert NO_GPU_STATUS not in {int(c) for c in pytest.ExitCode}
    assert cli._finish(NO_GPU_STATUS, tmp_path, strict=False) == cli.EXIT_NO_GPU == 3
    assert cli._finish(3, tmp_path, strict=False) == cli.EXIT_INCOMPLETE
    assert "3 no GPU to test" in cli.__doc__
