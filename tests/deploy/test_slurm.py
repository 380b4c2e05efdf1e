"""The Slurm path end to end against real daemons: submit (drained nodes skipped), one gpusoak task
per node on the simulated backend, `gpusoak fleet --apply`, then a readmission run; every check is
on what slurmctld says (`sinfo --json`)."""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.deploy.slurm_cluster import Cluster, unavailable

REPO = Path(__file__).resolve().parents[2]
GPUSOAK = str(Path(sys.executable).parent / "gpusoak")
NODES = ["node1", "node2", "node3", "node4"]

HEALTHY = '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\n[[gpu]]\nbdf = "0000:3a:00.0"\n'
BROKEN = HEALTHY.replace('bdf = "0000:3a:00.0"\n', 'bdf = "0000:3a:00.0"\nprofile = "vfio-reattach-fails"\n')
QUICK = 'description = "test: three fixed cycles"\nactions = ["flr", "vfio_cycle"]\ncycles = 3\n'

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


@pytest.fixture(scope="module")
def cluster():
    # munged wants every folder above its socket searchable by all: not pytest's 0700 tmp folders.
    root = Path(tempfile.mkdtemp(prefix="gpusoak-slurm-"))
    root.chmod(0o755)
    c = Cluster(root, NODES)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _sinfo(cluster) -> dict[str, dict]:
    deadline = time.monotonic() + 10
    while True:  # right after RESUME a node may read idle* for up to a second
        data = json.loads(cluster.run(["sinfo", "--json"]).stdout)
        nodes = {n["name"]: n for n in data["nodes"]}
        if not any("NOT_RESPONDING" in (n.get("state_flags") or []) for n in nodes.values()) or time.monotonic() > deadline:
            return nodes
        time.sleep(0.3)


def _drained(node: dict) -> bool:
    return "DRAIN" in (node.get("state_flags") or [])


def _wait_job(cluster, job: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not cluster.run(["squeue", "-h", "-j", job]).stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still queued or running after {timeout_s} s")


def test_fleet_drains_quarantined_nodes_leaves_others_and_readmission_resumes(cluster, tmp_path):
    scen = tmp_path / "scenarios"
    scen.mkdir()
    for n in NODES:
        (scen / f"{n}.toml").write_text(f'name = "{n}"\nhostname = "{n}"\nseed = 7\n' + (BROKEN if n == "node2" else HEALTHY))
    profile = tmp_path / "quick.toml"
    profile.write_text(QUICK)
    # Someone else drained node3 for maintenance: gpusoak must skip it and never resume it.
    ops = cluster.run(["scontrol", "update", "NodeName=node3", "State=DRAIN", "Reason=bad DIMM (ops)"])
    assert ops.returncode == 0, ops.stderr
    results = tmp_path / "results"
    env = {"GPUSOAK": GPUSOAK, "GPUSOAK_RESULTS": str(results), "GPUSOAK_RUN": "acceptance",
           "GPUSOAK_BACKEND": f"sim:{scen}/%n.toml", "GPUSOAK_PROFILE": str(profile)}
    submit = cluster.run([str(REPO / "deploy" / "slurm" / "submit"), "-w", "node[1-4]"], env=env)
    assert submit.returncode == 0, submit.stderr
    assert "skipping node3" in submit.stderr
    _wait_job(cluster, submit.stdout.strip().split(";")[0])
    ran = sorted(p.parent.name for p in (results / "acceptance").glob("*/result.json"))
    assert ran == ["node1", "node2", "node4"], list((results / "acceptance").iterdir())
    decisions = {n: json.loads((results / "acceptance" / n / "result.json").read_text())["node"] for n in ran}
    assert decisions["node2"]["decision"] == "quarantine" and decisions["node2"]["name"] == "node2"
    assert all(decisions[n]["decision"] != "quarantine" for n in ("node1", "node4"))

    applied = cluster.run([GPUSOAK, "fleet", str(results / "acceptance"), "--out", str(tmp_path / "fleet"),
                           "--scheduler", "slurm", "--apply"])
    assert applied.returncode == 0, applied.stdout + applied.stderr
    nodes = _sinfo(cluster)
    assert [n for n in NODES if _drained(nodes[n])] == ["node2", "node3"]
    assert nodes["node2"]["reason"].startswith("gpusoak: quarantine quarantine 0000:3a:00.0")
    assert nodes["node3"]["reason"] == "bad DIMM (ops)"
    assert (tmp_path / "fleet" / "fleet.html").exists()

    # After repair and reboot: readmission runs on node2 (and on node3) outside Slurm, as the
    # systemd unit does; the fleet resumes node2 only, since node3's drain is not gpusoak's.
    (scen / "node2.toml").write_text('name = "node2"\nhostname = "node2"\nseed = 7\n' + HEALTHY)
    for n in ("node2", "node3"):
        done = cluster.run([GPUSOAK, "run", "--backend", f"sim:{scen}/{n}.toml", "--profile", "readmission",
                            "--node-name", n, "--report-dir", str(results / "readmission" / n), "-q"], timeout=300)
        assert done.returncode == 0, done.stdout[-2000:]
    applied = cluster.run([GPUSOAK, "fleet", str(results / "readmission"), "--out", str(tmp_path / "fleet2"),
                           "--scheduler", "slurm", "--apply"])
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "node3: none" in applied.stdout and "someone else" in applied.stdout
    nodes = _sinfo(cluster)
    assert [n for n in NODES if _drained(nodes[n])] == ["node3"]
    assert nodes["node3"]["reason"] == "bad DIMM (ops)"
