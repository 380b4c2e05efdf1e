"""Evidence carried from night to night, through `gpusoak run` as CI runs it: two short nights on a
one-GPU simulated node, where the second goes on from the first and its sequential test decides;
then a driver upgrade, after which the third night starts afresh. The rebuilt report says the same."""

import json

from tests.e2e.conftest import gpusoak

NODE = """\
name = "carry-1gpu"
description = "one healthy GPU; the nights differ only in the driver"
hostname = "sim-carry-01"
kernel = "6.8.0-48-generic"
driver = "{driver}"
seed = 7
time_scale = 0.0

[defaults]
model = "NVIDIA H100 80GB HBM3"
device_id = "0x2330"
memory_gib = 80
link_speed = "32.0 GT/s PCIe"
link_width = 16
profile = "healthy"

[[gpu]]
bdf = "0000:18:00.0"
"""

# The nightly profile with a coarser test and no load, so that two one-minute nights can decide:
# H1 0.3 against H0 0.01 accepts a clean GPU after 9 cycles; a simulated minute holds 6 (the 10 s
# settle window).
PROFILE = """\
description = "nightly, with a test that decides in a few cycles"
actions = ["flr"]
parallel = true
rotate = true
budget = "1m"
trends = true
history = "{history}"
load_seconds = 0
post_check_seconds = 0

[sequential]
p0 = 0.01
p1 = 0.3
cap = 100
"""


def _night(tmp_path, name, driver):
    scenario = tmp_path / f"{name}.toml"
    scenario.write_text(NODE.format(driver=driver))
    out = tmp_path / name
    done = gpusoak("run", "--backend", f"sim:{scenario}", "--profile", tmp_path / "nights.toml", "--report-dir", out,
                   "-q", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return out, json.loads((out / "result.json").read_text())


def _flr(result):
    return result["gpus"][0]["sequences"]["flr"]


def test_a_night_goes_on_from_the_night_before_until_the_driver_changes(tmp_path):
    (tmp_path / "nights.toml").write_text(PROFILE.format(history=tmp_path / "history"))
    _, first = _night(tmp_path, "night1", "570.124.06")
    assert _flr(first)["carried"]["runs"] == 0 and _flr(first)["outcome"] == "undecided"
    n1 = _flr(first)["attempts"]
    assert 3 <= n1 < 9 and first["node"]["decision"] == "retest"

    out, second = _night(tmp_path, "night2", "570.124.06")
    carried = _flr(second)["carried"]
    assert (carried["runs"], carried["attempts"], carried["failures"]) == (1, n1, 0)
    assert carried["since"] == first["run"]["started_at"]
    # One test over both nights: it decides once the two together reach 9 clean cycles.
    assert _flr(second)["outcome"] == "reliable" and _flr(second)["sprt"]["cycles"] == 9
    assert _flr(second)["attempts"] == 9 - n1 and second["node"]["decision"] == "admit"
    # The report rebuilt from the journal starts from what the run carried, and says the same.
    rebuilt = tmp_path / "rebuilt"
    done = gpusoak("report", out / "journal.jsonl", "--out", rebuilt)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    again = json.loads((rebuilt / "result.json").read_text())
    assert again["gpus"][0]["sequences"] == second["gpus"][0]["sequences"]
    assert again["node"]["decision"] == "admit"

    _, third = _night(tmp_path, "night3", "580.65.06")  # the driver was upgraded
    fresh = _flr(third)["carried"]
    assert (fresh["runs"], fresh["attempts"], fresh["failures"]) == (0, 0, 0)
    assert "had driver 570.124.06" in fresh["reason"] and "standing" not in fresh
    assert _flr(third)["outcome"] == "undecided" and third["node"]["decision"] == "retest"
