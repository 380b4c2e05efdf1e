"""The link compared like with like: width at idle, speed under load, capability as a warning."""

import pytest

from gpusoak.model import LinkState, PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.sim.nvml import SimNvmlLib
from gpusoak.soak import Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")
LOADED = dict(load_seconds=1.0, post_check_seconds=0.5, ladder=False)


@pytest.fixture
def soak_of(tmp_path):
    opened = []

    def make(gpu_lines: str = "", **options):
        path = tmp_path / "s.toml"
        path.write_text(f'[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n{gpu_lines}\n')
        s = open_sim_node(str(path))
        opened.append(s)
        soak = Soak(s.node, "r", SoakOptions(**{**LOADED, **options}), [GPU])
        soak.start(tmp_path / "j.jsonl")
        return s, soak

    yield make
    for s in opened:
        s.node.close()


def _check(result, name):
    (check,) = [c for c in result.checks if c.name == name]
    return check


def test_an_idle_gpus_link_reads_gen1_after_the_cycle_and_the_cycle_recovers(soak_of):
    s, soak = soak_of()
    r = soak.run_cycle(GPU, "flr", 1)
    link = s.node.sysfs.function(GPU).link
    assert (link.current_speed, link.current_width) == ("2.5 GT/s PCIe", 16)  # idle: Gen1, width stays
    lib = SimNvmlLib(s.kernel)
    lib.nvmlInit()
    handle = lib.nvmlDeviceGetHandleByPciBusId(GPU.nvml_bus_id)
    assert (lib.nvmlDeviceGetCurrPcieLinkGeneration(handle), lib.nvmlDeviceGetMaxPcieLinkGeneration(handle)) \
        == (1, 5)  # NVML agrees with sysfs: Gen1 at idle, Gen5 capable
    lib.nvmlShutdown()
    assert r.outcome == "recovered"
    assert r.load["link_speed"] == r.post_check["link_speed"] == "32.0 GT/s PCIe"  # read under load
    assert _check(r, "link_speed").status == "pass"
    assert soak.header()["gpus"][0]["warnings"] == []


def test_speed_slower_under_load_after_the_reset_fails_link_speed(soak_of):
    s, soak = soak_of('profile = "degraded-link"\np = 1.0\nwidth = 0\nspeed = "16.0 GT/s PCIe"')
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == "failed" and "link_speed" in {f.reason for f in r.findings}
    assert _check(r, "link_speed").detail == "link 16.0 GT/s PCIe under load, expected 32.0 GT/s PCIe"
    assert _check(r, "link_width").status == "pass"


def test_without_a_post_check_speed_is_not_applicable_and_the_cycle_recovers(soak_of):
    s, soak = soak_of('profile = "degraded-link"\np = 1.0\nwidth = 0\nspeed = "16.0 GT/s PCIe"',
                      post_check_seconds=0.0)
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == "recovered"  # nothing could see the slower speed, and nothing claimed it
    check = _check(r, "link_speed")
    assert (check.status, check.detail) == ("skip", "not compared: no load after the reset (no post-check)")


def test_an_x8_wired_slot_is_a_warning_not_a_failure(soak_of):
    s, soak = soak_of("port_link_width = 8")
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == "recovered"
    assert s.node.sysfs.function(GPU).link.current_width == 8
    assert soak.header()["gpus"][0]["warnings"] == ["link x8 before any reset, capable of x16 (GPU and port)"]


def test_a_bios_capped_generation_is_a_warning_seen_under_load(soak_of):
    s, soak = soak_of('port_link_speed = "16.0 GT/s PCIe"')
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == "recovered" and _check(r, "link_speed").status == "pass"  # like with like
    assert soak.header()["gpus"][0]["warnings"] == [
        "link 16.0 GT/s PCIe under load before any reset, capable of 32.0 GT/s PCIe (GPU and port)"]


def test_a_port_capable_of_less_than_the_gpu_is_no_warning(soak_of):
    s, soak = soak_of('port_max_link_speed = "16.0 GT/s PCIe"\nport_max_link_width = 8')
    assert soak.run_cycle(GPU, "flr", 1).outcome == "recovered"
    assert soak.header()["gpus"][0]["warnings"] == []  # the lesser of GPU and port is the expectation


def test_a_link_narrower_after_the_reset_than_its_x8_baseline_fails_link_width(soak_of):
    s, soak = soak_of('port_link_width = 8\nprofile = "degraded-link"\np = 1.0\nwidth = 4')
    r = soak.run_cycle(GPU, "flr", 1)
    assert r.outcome == "failed" and "link_width" in {f.reason for f in r.findings}
    assert _check(r, "link_width").detail == "link x4, expected x8"


def test_link_capability_is_the_lesser_of_gpu_and_port():
    from gpusoak.model import link_capability, link_gts

    gpu = LinkState("2.5 GT/s PCIe", 16, "32.0 GT/s PCIe", 16)
    port = LinkState("16.0 GT/s PCIe", 8, "16.0 GT/s PCIe", 8)
    assert link_capability(gpu, port) == ("16.0 GT/s PCIe", 8)
    assert link_capability(gpu, None) == ("32.0 GT/s PCIe", 16)
    assert link_capability(gpu, LinkState(None, None, "Unknown", None)) == ("32.0 GT/s PCIe", 16)
    assert link_capability(None, None) == (None, None)
    assert [link_gts(t) for t in ("2.5 GT/s PCIe", "64.0 GT/s PCIe", "Unknown", None)] == [2.5, 64.0, None, None]


def test_link_warnings_reach_result_json_and_the_html_summary(soak_of, tmp_path):
    import jsonschema

    from gpusoak.report import build, html, result_json

    s, soak = soak_of('port_link_width = 8\nport_link_speed = "16.0 GT/s PCIe"')
    soak.run_cycle(GPU, "flr", 1)
    built = build.rebuild(tmp_path / "j.jsonl", tmp_path / "out")
    jsonschema.validate(built.document, result_json.schema())
    (gpu,) = built.document["gpus"]
    assert gpu["warnings"] == [  # the width at idle (header), the speed under load (a journal note)
        "link x8 before any reset, capable of x16 (GPU and port)",
        "link 16.0 GT/s PCIe under load before any reset, capable of 32.0 GT/s PCIe (GPU and port)"]
    assert built.content.problems == []
    assert gpu["class"] != "fail"
    page = html.summary(built.verdict, run_id="r", backend="sim", kernel=None, driver=None, document=built.document)
    assert "warning: 0000:18:00.0: link x8 before any reset, capable of x16 (GPU and port)" in page
