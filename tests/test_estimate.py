"""`gpusoak plan --profile NAME`: the profile's plan and an estimate of its node time on a real node,
every assumed time named (gpusoak/estimate.py)."""

import json
import math

from gpusoak import cli
from gpusoak.estimate import CHILD_START, RESET_RECOVERY_S


def _plan(capsys, *args):
    assert cli.main(["plan", "--backend", "sim", *args]) == 0
    return capsys.readouterr().out


def test_plan_with_the_acceptance_profile_estimates_a_real_nodes_time(capsys):
    report = json.loads(_plan(capsys, "--profile", "acceptance", "--json"))
    est = report["estimate"]
    assert report["profile"]["name"] == "acceptance" and report["cycles"] == 300  # the plan: up to the cap
    # The actions this node supports, as the run would plan them (the simulated GPUs refuse pm_reset).
    assert [r["action"] for r in est["actions"]] == [o.split(":")[0] for o in report["order"]]
    assert "pm_reset" not in [r["action"] for r in est["actions"]] and "module_reload" in report["order"][-1]
    # A clean GPU's cycles for the sequential test, a real node's load and post-check (whatever the
    # scenario's), the settle window, and each assumed time with its basis.
    assert est["cycles"] == 150 and est["gpus"] == 8 and est["parallel"]
    pc = est["per_cycle"]
    assert (pc["load_s"], pc["post_check_s"], pc["settle_s"]) == (20.0, 5.0, 10.0)
    flr = next(r for r in est["actions"] if r["action"] == "flr")
    assert flr["reset_recovery_s"] == RESET_RECOVERY_S["flr"].seconds and flr["mark"] == "[U]" and "pcie_flr" in flr["basis"]
    assert flr["cycle_s"] == 20 + 5 + 10 + 2 * CHILD_START.seconds + RESET_RECOVERY_S["flr"].seconds
    reload = next(r for r in est["actions"] if r["action"] == "module_reload")
    # Node-wide: each of the 8 GPUs loaded and post-checked in turn, one reload, one shared settle.
    assert reload["cycle_s"] == 8 * (20 + 5 + 2 * CHILD_START.seconds) + RESET_RECOVERY_S["module_reload"].seconds + 10
    per_gpu = sum(r["cycles"] * r["cycle_s"] for r in est["actions"] if r["scope"] == "gpu")
    node = reload["cycles"] * reload["cycle_s"]
    assert est["node_s"] == {"parallel": round(per_gpu + node, 1), "serial": round(8 * per_gpu + node, 1)}
    assert est["total_s"] == est["node_s"]["parallel"] and est["budget_s"] is None and est["nights"] is None
    text = _plan(capsys, "--profile", "acceptance")
    assert "profile acceptance: up to 300 cycles" in text
    assert "estimate of node time on a real node (profile acceptance, 8 GPUs in parallel)" in text
    assert "load 20 s" in text and "settle window 10 s" in text and "times marked [U] are assumptions" in text
    assert all(f"{RESET_RECOVERY_S[r['action']].seconds:g} s [U]" in text for r in est["actions"])


def test_the_nightly_estimate_says_how_many_nights_the_test_needs_at_its_budget(capsys):
    est = json.loads(_plan(capsys, "--profile", "nightly", "--json"))["estimate"]
    assert est["budget_s"] == 3600 and est["carries_over"]
    gpu = [r for r in est["actions"] if r["scope"] == "gpu"]
    share = 3600 * len(gpu) / len(est["actions"])  # the GPU actions' share of the budget, taken in turn
    per_night = share / sum(r["cycle_s"] for r in gpu)
    assert est["cycles_per_run"]["flr"] == math.ceil(per_night)
    assert est["runs_needed"]["flr"] == math.ceil(150 / per_night)
    assert est["nights"] == max(est["runs_needed"].values()) == est["runs_needed"]["module_reload"]
    text = _plan(capsys, "--profile", "nightly", "--budget", "2h")
    assert "budget 2h00m: each run reaches about" in text and "evidence carries over from night to night" in text
    # The readmission profile's fixed cycles and its own load and post-check.
    est = json.loads(_plan(capsys, "--profile", "readmission", "--json"))["estimate"]
    assert est["cycles"] == 3 and est["per_cycle"]["load_s"] == 0 and est["per_cycle"]["post_check_s"] == 5
    assert [r["action"] for r in est["actions"]] == ["flr", "rebind", "vfio_cycle"]


def test_a_profile_file_with_serial_gpus_takes_each_gpu_in_turn(capsys, tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('actions = ["flr"]\ncycles = 10\nparallel = false\nload_seconds = 0\npost_check_seconds = 0\n')
    est = json.loads(_plan(capsys, "--profile", str(mine), "--json"))["estimate"]
    cycle = RESET_RECOVERY_S["flr"].seconds + 10  # no load child at all, then the settle window
    assert not est["parallel"] and est["actions"][0]["cycle_s"] == cycle
    assert est["total_s"] == est["node_s"]["serial"] == 8 * 10 * cycle and est["node_s"]["parallel"] == 10 * cycle
    assert "8 GPUs one after another" in _plan(capsys, "--profile", str(mine))


def test_budget_needs_a_profile(capsys):
    assert cli.main(["plan", "--budget", "1h"]) == 2
    assert "--budget needs --profile" in capsys.readouterr().err
