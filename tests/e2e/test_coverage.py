"""What was not tested cannot admit (issue 14): a run on a subset of the GPUs, and a GPU missing
against the node's inventory from its previous run, through `gpusoak run` as a user runs it."""

import json

import jsonschema

from gpusoak.report.result_json import schema

from .conftest import gpusoak

ONE = "0000:18:00.0"  # a healthy GPU of the default scenario (h100-8gpu)


def _result(out):
    doc = json.loads((out / "result.json").read_text())
    jsonschema.validate(doc, schema())
    return doc


def test_a_run_on_one_gpu_of_eight_is_a_subset_and_never_admits(tmp_path):
    out = tmp_path / "r"
    done = gpusoak("run", "--gpus", ONE, "--cycles", 16, "--report-dir", out, "--strict", "-q",
                   "--sim-load", "in-process")
    doc = _result(out)
    assert doc["gpus"][0]["class"] == "pass"  # the GPU it tested passed...
    assert doc["node"]["decision"] == "subset"  # ...but seven were never tried
    assert done.returncode == 1  # --strict: not admit
    inv = doc["inventory"]
    assert inv["tested"] == [ONE] and len(inv["found"]) == 8 and len(inv["untested"]) == 7
    assert ONE not in inv["untested"] and "0000:9a:00.0" in inv["untested"]
    assert "1 of the 8" in doc["node"]["evidence"][0] and "0000:9a:00.0" in doc["node"]["evidence"][0]


def test_a_gpu_missing_from_the_nodes_inventory_fails_the_node_and_stays_in_the_inventory(tmp_path):
    inventory = tmp_path / "inventory.json"
    first = gpusoak("run", "--gpus", ONE, "--cycles", 1, "--report-dir", tmp_path / "a",
                    "--inventory", inventory, "-q")
    assert first.returncode == 0, first.stderr[-2000:]
    kept = json.loads(inventory.read_text())
    assert len(kept["gpus"]) == 8  # every GPU on the bus, not only the one tested
    # The next boot, a GPU the node had is gone from the bus.
    kept["gpus"].append({"bdf": "0000:c1:00.0", "device": "0x2330"})
    inventory.write_text(json.dumps(kept))
    second = gpusoak("run", "--gpus", ONE, "--cycles", 1, "--report-dir", tmp_path / "b",
                     "--inventory", inventory, "-q")
    assert second.returncode == 0, second.stderr[-2000:]
    doc = _result(tmp_path / "b")
    assert doc["node"]["decision"] == "quarantine"
    assert doc["inventory"]["missing"] == ["0000:c1:00.0"]
    lost = next(g for g in doc["gpus"] if g["bdf"] == "0000:c1:00.0")
    assert lost["class"] == "fail" and lost["evidence"][0].startswith("gpu_missing")
    assert lost["reliability"]["class"] == "hardware-investigation"
    assert doc["node"]["evidence"][0].startswith("0000:c1:00.0 gpu_missing")
    # The inventory still lists it: the next run fails again until someone removes it on purpose.
    assert "0000:c1:00.0" in [g["bdf"] for g in json.loads(inventory.read_text())["gpus"]]


def test_an_unreadable_inventory_is_a_clear_error_not_an_empty_one(tmp_path):
    inventory = tmp_path / "inventory.json"
    inventory.write_text("{not json")
    done = gpusoak("run", "--gpus", ONE, "--cycles", 1, "--report-dir", tmp_path / "a",
                   "--inventory", inventory, "-q")
    assert done.returncode == 2
    assert "inventory" in done.stderr and str(inventory) in done.stderr


def test_a_readmission_of_one_gpu_does_not_lift_the_nodes_quarantine(tmp_path):
    out = tmp_path / "r"
    done = gpusoak("run", "--profile", "readmission", "--gpus", ONE, "--report-dir", out, "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _result(out)["node"]["decision"] == "subset"
    fleet = gpusoak("fleet", out, "--scheduler", "k8s", "--out", tmp_path / "f")
    assert fleet.returncode == 0, fleet.stderr[-2000:]
    assert "untaint" not in fleet.stdout and "quarantine:NoSchedule-" not in fleet.stdout


UNDER_LOAD = """
name = "two-faults-under-load"
hostname = "sim-under-load"
kernel = "6.8.0-48-generic"
seed = 3
# No load_seconds: the simulated node loads as a real node does (20 s before each cycle, a 5 s
# post-check after it); these two faults show only under load.

[[gpu]]
bdf = "0000:18:00.0"
profile = "falls-off-bus-under-load"
p = 0.5

[[gpu]]
bdf = "0000:2a:00.0"
profile = "silent-corruption"
p = 0.5
"""


def test_a_scenario_without_load_settings_loads_as_a_real_node_and_its_faults_show(tmp_path):
    # The plain run, with the real load child: the GPU that falls off the bus under load and the
    # one whose memory returns wrong data after a reset fail, as on a real node (with no load they
    # were admitted).
    scenario = tmp_path / "under-load.toml"
    scenario.write_text(UNDER_LOAD)
    out = tmp_path / "r"
    done = gpusoak("run", "--backend", f"sim:{scenario}", "--cycles", 4, "--report-dir", out, "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    doc = _result(out)
    assert doc["run"]["options"]["load_seconds"] == 20.0 and doc["run"]["options"]["post_check_seconds"] == 5.0
    assert {g["bdf"]: g["class"] for g in doc["gpus"]} == {"0000:18:00.0": "fail", "0000:2a:00.0": "fail"}
    evidence = {g["bdf"]: " ".join(g["evidence"]) for g in doc["gpus"]}
    assert "mismatch" in evidence["0000:2a:00.0"]
    assert doc["node"]["decision"] in ("quarantine", "reboot_required")

