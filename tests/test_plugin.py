"""The pytest plugin, through pytester."""

import pytest

pytest_plugins = ["pytester"]


def test_plugin_is_inert_outside_the_suites(pytester):
    pytester.makepyfile("def test_ok():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "gpusoak: node" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_options_are_registered(pytester):
    result = pytester.runpytest_subprocess("--help")
    out = result.stdout.str()
    for option in ("--gpusoak-backend", "--gpusoak-cycles", "--gpusoak-destructive", "--gpusoak-replay"):
        assert option in out


def test_a_suite_enables_the_soak_and_writes_reports(pytester):
    pytester.makeconftest(
        "import pytest\nfrom gpusoak.plugin import enable\n\n"
        "@pytest.hookimpl(tryfirst=True)\ndef pytest_configure(config):\n    enable(config)\n")
    pytester.makepyfile(
        "from gpusoak.plugin import expect_recovered, soak_run\n\n"
        "def test_cycle(pytestconfig, action, cycle, gpu):\n"
        "    expect_recovered(soak_run(pytestconfig).soak.run_cycle(gpu, action, cycle))\n")
    out = pytester.path / "out"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--gpusoak-cycles=1",
                                           "--gpusoak-gpus=0000:18:00.0", f"--gpusoak-report-dir={out}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*gpusoak: node sim-h100-01: retest*"])
    assert {p.name for p in out.iterdir()} >= {"journal.jsonl", "result.json", "junit.xml", "report.html"}


def test_a_node_that_shows_no_gpu_has_nothing_to_test(tmp_path):
    from gpusoak.errors import NoGpu
    from gpusoak.model import PciAddress
    from gpusoak.plugin import select_gpus
    from gpusoak.sim import open_sim_node

    node = tmp_path / "one.toml"
    node.write_text('name = "one"\n[[gpu]]\nbdf = "0000:18:00.0"\n')
    sim = open_sim_node(str(node))
    try:
        gpu = PciAddress.parse("0000:18:00.0")
        assert select_gpus(sim.node, [], []) == [gpu]
        # persistenced holds the GPU, and a remove waits for it (nv_pci_remove): stopped first.
        assert sim.node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5).ok
        sim.kernel.write(sim.node.sysfs.function(gpu).path / "remove", "1")  # gone from the bus
        with pytest.raises(NoGpu, match="no NVIDIA GPU on .*nothing to test"):
            select_gpus(sim.node, [], [])
        # A GPU the node's inventory lists is missing, not "nothing to test": the run goes on, and
        # its verdict fails the node (gpu_missing).
        assert select_gpus(sim.node, [], [], expected=["0000:18:00.0"]) == []
    finally:
        sim.node.close()
