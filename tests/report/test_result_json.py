"""result.json records what each action meant in the run (its semantics version)."""

import jsonschema

from gpusoak import journal
from gpusoak.model import PciAddress
from gpusoak.report import build, result_json
from gpusoak.soak import Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")


def test_result_json_records_each_actions_semantics_version(sim, tmp_path):
    soak = Soak(sim.node, "r", SoakOptions(cycles=1, ladder=False), [GPU])
    soak.start(tmp_path / "j.jsonl")
    soak.run_cycle(GPU, "flr", 1)
    content = journal.read(tmp_path / "j.jsonl")
    doc = result_json.build(content, build.verdict_of(content))
    assert doc["schema_version"] == "1.3"
    assert doc["inventory"]["tested"] == [str(GPU)] and len(doc["inventory"]["found"]) == 8
    # flr 2: unbind the slot from nvidia, FLR, bind back (1 was the FLR under the bound driver).
    assert doc["run"]["actions_semantics"]["flr"] == 2 and doc["run"]["actions_semantics"]["gpu_reset"] == 1
    jsonschema.validate(doc, result_json.schema())


def test_a_journal_from_before_the_versions_ran_the_first_meaning():
    header = {"options": {"actions": ["flr", "rebind"]}}
    assert result_json.semantics_of(header) == {"flr": 1, "rebind": 1}
