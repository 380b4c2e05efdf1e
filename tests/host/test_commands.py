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
