"""Load in the soak: in a child that has exited before the reset, never cupy in this process."""

import sys

from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import LOAD_CHARGED, Soak, SoakOptions

GPU = PciAddress.parse("0000:18:00.0")


def _soak(tmp_path, gpu_lines, **options):
    path = tmp_path / "s.toml"
    path.write_text(f'[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n{gpu_lines}\n')
    s = open_sim_node(str(path))
    soak = Soak(s.node, "r", SoakOptions(**options), [GPU])
    soak.start(tmp_path / "j.jsonl")
    return s, soak


SOAK_IN_A_FRESH_PROCESS = """
import json, os, sys, tempfile, pathlib
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from gpusoak.soak import Soak, SoakOptions
s = open_sim_node()
gpu = PciAddress.parse("0000:18:00.0")
soak = Soak(s.node, "r", SoakOptions(load_seconds=1.0, post_check_seconds=0.5), [gpu])
soak.start(pathlib.Path(tempfile.mkdtemp()) / "j.jsonl")
r = soak.run_cycle(gpu, "flr", 1)
print(json.dumps({"outcome": r.outcome, "load": r.load, "post": r.post_check, "pid": os.getpid(),
                  "modules": sorted(m for m in sys.modules if m.startswith(("cupy", "gpusoak.load")))}))
"""


def test_load_runs_in_a_child_and_the_soak_process_never_imports_cupy():
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", SOAK_IN_A_FRESH_PROCESS], capture_output=True, text=True, timeout=120)
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["outcome"] == "recovered" and doc["load"]["exit"] == 0 and doc["post"]["exit"] == 0
    assert doc["load"]["pid"] != doc["pid"] and doc["post"]["pid"] not in (doc["pid"], doc["load"]["pid"])
    assert doc["load"]["vram_bytes"] > 0 and doc["load"]["mismatched_words"] == 0
    # The soak's process has the parent side of the load only (and the protocol it shares with the
    # child): no cupy, no device code, no checks.
    assert doc["modules"] == ["gpusoak.load", "gpusoak.load.child", "gpusoak.load.protocol"]


def test_a_gpu_that_falls_off_only_under_load(tmp_path):
    profile = 'profile = "falls-off-bus-under-load"\np = 1.0'
    s, soak = _soak(tmp_path, profile, load_seconds=0.0, ladder=False)
    try:
        assert soak.run_cycle(GPU, "flr", 1).outcome == "recovered"  # idle: resets cleanly
    finally:
        s.node.close()
    s, soak = _soak(tmp_path, profile, load_seconds=1.0, ladder=False)
    try:
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "failed" and r.reason == "xid_79"
        lost = soak.run_cycle(GPU, "flr", 2)  # the next load meets a GPU that is gone
        # Cycle 1's doing, already its failure: cycle 2's flr never ran, so it is no attempt.
        assert lost.outcome == "refused" and [f.reason for f in lost.findings] == [LOAD_CHARGED, "load_gpu_failed"]
        assert "GPU lost mid-load" in lost.findings[1].detail and "already counted against flr cycle 1" in lost.findings[0].detail
    finally:
        s.node.close()


def test_wrong_data_after_a_reset_is_caught_by_the_post_check(tmp_path):
    s, soak = _soak(tmp_path, 'profile = "silent-corruption"\np = 1.0', load_seconds=1.0, post_check_seconds=0.5)
    try:
        r = soak.run_cycle(GPU, "flr", 1)
        checks = {c.name: c.status for c in r.checks}
        assert checks["nvml"] == "pass" and checks["link_width"] == "pass"  # everything else looks recovered
        assert r.outcome == "failed" and r.reason == "post_check_memory_mismatch"
        assert r.post_check["mismatched_words"] > 0
    finally:
        s.node.close()


class _BrokenLoadChild:
    """The node's runner, except that gpusoak's load child dies as a missing numpy makes it die:
    a traceback and Python's own exit 1, no report (the plain-install bug this guards)."""

    def __init__(self, inner, after=0, answer=None):
        self.inner, self.after, self.calls = inner, after, 0
        self.answer = answer or (1, "", "Traceback (most recent call last):\n"
                                 "ModuleNotFoundError: No module named 'numpy'\n")

    def run(self, argv, *, timeout_s, env=None):
        from gpusoak.host.commands import CommandResult

        if list(argv[1:3]) == ["-m", "gpusoak.load"]:
            self.calls += 1
            if self.calls > self.after:
                return CommandResult(tuple(argv), *self.answer, 0.1)
        return self.inner.run(argv, timeout_s=timeout_s, env=env)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_load_child_that_crashes_is_gpusoaks_failure_not_the_gpus(tmp_path):
    s, soak = _soak(tmp_path, "", load_seconds=1.0, ladder=False)
    try:
        s.node.runner = _BrokenLoadChild(s.node.runner)
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "refused", r.explain()  # not "failed": nothing is known of the GPU
        (f,) = r.findings
        assert f.reason == "load_child_crashed" and "No module named 'numpy'" in f.detail
        assert "mismatch" not in f.reason
    finally:
        s.node.close()


def test_a_post_check_child_that_crashes_leaves_the_cycle_unjudged(tmp_path):
    s, soak = _soak(tmp_path, "", load_seconds=1.0, post_check_seconds=0.5, ladder=False)
    try:
        s.node.runner = _BrokenLoadChild(s.node.runner, after=1)  # the load works, the post-check breaks
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "inconclusive" and not r.attempted, r.explain()  # neither recovered nor failed
        assert [f.reason for f in r.findings] == ["post_check_child_crashed"]
    finally:
        s.node.close()


def test_a_load_child_that_reports_and_then_dies_is_gpusoaks_failure(tmp_path):
    # A document, then an exception on the way out (Python exits 1 for it): the status is not the
    # one the document names, so neither can be trusted, and 1 must not read as "wrong result".
    import json

    report = json.dumps({"bdf": str(GPU), "pid": 7, "gemm": [], "vram": {"mismatched_words": 0},
                         "ok": True, "verdict": "ok", "exit": 0})
    s, soak = _soak(tmp_path, "", load_seconds=1.0, ladder=False)
    try:
        s.node.runner = _BrokenLoadChild(s.node.runner, answer=(
            1, report + "\n", "Exception ignored in: <_io.TextIOWrapper name='<stdout>'>\nBrokenPipeError\n"))
        r = soak.run_cycle(GPU, "flr", 1)
        assert r.outcome == "refused", r.explain()
        (f,) = r.findings
        assert f.reason == "load_child_crashed" and "BrokenPipeError" in f.detail and "'ok'" in f.detail
    finally:
        s.node.close()


def test_no_verdict_of_the_load_child_exits_with_a_status_python_gives_on_its_own():
    from gpusoak.load import protocol

    # 1: an uncaught exception; 2: argparse's usage error; 120: a failed flush at exit.
    assert not {1, 2, 120} & set(protocol.EXIT.values())
    assert len(set(protocol.EXIT.values())) == len(protocol.EXIT)
    assert protocol.verdict_of({"verdict": "ok", "exit": 0}, 0) == "ok"
    assert protocol.verdict_of({"verdict": "ok", "exit": 0}, 1) is None
    assert protocol.verdict_of({"verdict": "wrong_result", "exit": 1}, 1) is None
