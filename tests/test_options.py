"""The one table of what each option may be (gpusoak/options.py)."""

import math

import pytest

from gpusoak import cli, options
from gpusoak.errors import UsageError
from gpusoak.soak import SoakOptions


def _refused(values, prefix="--"):
    with pytest.raises(UsageError) as info:
        options.validate(options.Given(values, prefix))
    return str(info.value)


def test_every_option_in_the_table_is_an_option_of_gpusoak_run():
    given = vars(cli._parser().parse_args(["run"]))
    assert [n for n in options.NAMES if n.replace("-", "_") not in given] == []


@pytest.mark.parametrize("name", ["recovery-deadline", "write-timeout"])
def test_deadlines_and_timeouts_are_finite_and_above_zero(name):
    for bad in (0, -1, math.nan, math.inf, -math.inf, options.MAX_WAIT_S + 1):
        assert _refused({name: bad}).startswith(f"--{name} ")
    options.validate(options.Given({name: 0.001}))
    options.validate(options.Given({name: options.MAX_WAIT_S}))


@pytest.mark.parametrize("name", ["settle", "load-seconds", "post-check-seconds"])
def test_zero_means_none_where_an_option_allows_it(name):
    options.validate(options.Given({name: 0}))
    for bad in (-0.1, math.nan, math.inf):
        assert f"--{name} " in _refused({name: bad})


def test_cycles_and_the_load_fraction_have_stated_bounds():
    options.validate(options.Given({"cycles": options.MAX_CYCLES, "load-fraction": 0.98}))
    assert "between 1 and 10000" in _refused({"cycles": options.MAX_CYCLES + 1})
    assert "not a whole number" in _refused({"cycles": 2.5})
    for bad in (0.0, -0.5, 0.99, 1.0, 1.01, math.nan):  # the load child refuses above 0.98
        assert "above 0 and at most 0.98" in _refused({"load-fraction": bad})


def test_the_pytest_entry_point_names_its_own_options():
    assert _refused({"write-timeout": 0}, "--gpusoak-").startswith("--gpusoak-write-timeout 0: ")
    assert "--gpusoak-profile" in _refused({"budget": "1h"}, "--gpusoak-")


def test_a_run_built_in_code_is_held_to_the_same_table():
    # gpusoak plan, the tests and a profile's load seconds build SoakOptions directly.
    for bad in (dict(recovery_deadline_s=-1.0), dict(write_timeout_s=0.0), dict(settle_s=math.nan),
                dict(load_fraction=0.0), dict(load_seconds=math.inf), dict(cycles=10**11)):
        with pytest.raises(UsageError):
            SoakOptions(**bad)
    SoakOptions(settle_s=0.0, load_seconds=0.0, post_check_seconds=0.0)


def test_a_continued_run_must_be_the_same_run():
    header = {"run_id": "r1", "backend": "sim:one", "hostname": "n1", "gpus": [{"bdf": "0000:18:00.0"}],
              "options": {"cycles": 3, "actions": ["flr"]}}
    options.check_resume(header, "sim:one", "n1", {"cycles": 3, "actions": ("flr",)}, ["0000:18:00.0"])
    with pytest.raises(UsageError, match="host n1 in the journal, n2 now.*cycles 3 in the journal, 5 now"):
        options.check_resume(header, "sim:one", "n2", {"cycles": 5, "actions": ("flr",)}, ["0000:18:00.0"])
    with pytest.raises(UsageError, match="GPUs 0000:18:00.0 in the journal, 0000:9a:00.0 now"):
        options.check_resume(header, "sim:one", "n1", {"cycles": 3, "actions": ("flr",)}, ["0000:9a:00.0"])
