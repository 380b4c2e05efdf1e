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
    assert doc["schema_version"] == "1.4"
    assert doc["inventory"]["tested"] == [str(GPU)] and len(doc["inventory"]["found"]) == 8
    # flr 2: unbind the slot from nvidia, FLR, bind back (1 was the FLR under the bound driver).
    assert doc["run"]["actions_semantics"]["flr"] == 2 and doc["run"]["actions_semantics"]["gpu_reset"] == 1
    jsonschema.validate(doc, result_json.schema())


def test_a_journal_from_before_the_versions_ran_the_first_meaning():
    header = {"options": {"actions": ["flr", "rebind"]}}
    assert result_json.semantics_of(header) == {"flr": 1, "rebind": 1}


def test_each_cycles_load_figures_are_in_result_json_and_the_html(sim, tmp_path):
    from gpusoak.report import html

    soak = Soak(sim.node, "r", SoakOptions(cycles=1, ladder=False, load_seconds=1.0, post_check_seconds=0.5), [GPU])
    soak.start(tmp_path / "j.jsonl")
    soak.run_cycle(GPU, "flr", 1)
    content = journal.read(tmp_path / "j.jsonl")
    doc = result_json.build(content, build.verdict_of(content))
    jsonschema.validate(doc, result_json.schema())
    (gpu,) = [g for g in doc["gpus"] if g["bdf"] == str(GPU)]
    phases = [(f["action"], f["cycle"], f["phase"]) for f in gpu["load"]]
    assert phases == [("flr", 1, "load"), ("flr", 1, "post_check")]
    for f in gpu["load"]:  # the simulated node loads the CPU (numpy): real figures, no NVML
        assert f["verdict"] == "ok" and f["tflops_fp16"] > 0 and f["tflops_fp32"] > 0 and f["vram_bytes"] > 0
        assert 0 < f["busy_share"] <= 1 and f["vram_passes"] >= 1 and f["window_s"] >= 0
        assert f["tflops_bf16"] is None and f["power_w_mean"] is None
        assert f["telemetry"] == "the CPU load has no GPU to sample"
    page = html.load_table(content.results)
    assert page.count("<tr><td>0000:18:00.0</td><td>flr</td><td>1</td>") == 2 and "post-check" in page
    assert f"{gpu['load'][0]['tflops_fp16']:.4g}" in page
