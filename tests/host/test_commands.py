import sys

import pytest

from gpusoak.host.commands import SubprocessRunner


def test_runs_argv_and_captures():
    r = SubprocessRunner().run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                               timeout_s=30)
    assert (r.returncode, r.stdout.strip(), r.stderr.strip()) == (3, "out", "err")
    assert not r.ok and not r.timed_out


def test_timeout_is_a_result_not_a_hang():
    r = SubprocessRunner().run([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    assert r.timed_out and r.duration_s < 10


def test_missing_program_answers_127():
    r = SubprocessRunner().run(["gpusoak-no-such-program"], timeout_s=5)
    assert r.returncode == 127 and "gpusoak-no-such-program" in r.stderr


def test_shell_strings_are_refused():
    with pytest.raises(TypeError):
        SubprocessRunner().run("nvidia-smi -r", timeout_s=5)  # type: ignore[arg-type]


def test_the_deadline_holds_for_a_child_whose_output_outlives_its_kill():
    # subprocess.run kills a child past its timeout, then waits for its output without a limit: a
    # grandchild holding the pipes (or a child stuck in the kernel) would hang gpusoak for as long.
    import time

    from gpusoak.host.commands import SubprocessRunner

    runner = SubprocessRunner()
    runner.kill_grace_s = 0.3
    start = time.monotonic()
    r = runner.run(["sh", "-c", "sleep 20 & sleep 20"], timeout_s=0.3)
    assert time.monotonic() - start < 5
    assert r.timed_out and r.left_running is not None
