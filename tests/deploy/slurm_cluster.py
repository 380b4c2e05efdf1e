"""A real Slurm cluster on this machine for the tests: munged, slurmctld and one slurmd per node,
all child processes of the test, configured under a temporary folder (nothing in /etc or /run),
stopped by PID at the end. See shared/reference/slurm-local-cluster.md."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "squeue")


def unavailable() -> str | None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"Slurm is not installed here (missing {', '.join(missing)}; .ci/run installs slurmctld slurmd " \
               "slurm-client munge as root)"
    if os.geteuid() != 0:
        return "Slurm's drain and resume need root (SlurmUser=root); run as root"
    return None


class Cluster:
    def __init__(self, root: Path, nodes: list[str]) -> None:
        self.root, self.nodes = root, nodes
        self.procs: list[subprocess.Popen] = []
        base = random.randint(20000, 40000)
        self.ctld_port, self.node_ports = base, [base + 1 + i for i in range(len(nodes))]
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def start(self, timeout_s: float = 60.0) -> None:
        r = self.root
        (r / "munge").mkdir(mode=0o755, parents=True)
        (r / "munge").chmod(0o755)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(["munged", "-F", f"--key-file={key}", f"--socket={r / 'munge' / 'munge.sock'}",
                     f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'munged.log'}",
                     f"--seed-file={r / 'munged.seed'}"], "munged")
        self._wait(lambda: (r / "munge" / "munge.sock").exists(), 10, "munged's socket")
        host = socket.gethostname()
        (r / "state").mkdir()
        ranges = ",".join(self.nodes)
        conf = f"""ClusterName=gpusoaktest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
AuthType=auth/munge
AuthInfo=socket={r / 'munge' / 'munge.sock'}
CryptoType=crypto/munge
SlurmUser=root
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r}/spool-%n
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
"""
        for name, port in zip(self.nodes, self.node_ports, strict=True):
            conf += f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=2 RealMemory=1000\n"
        conf += f"PartitionName=debug Nodes={ranges} Default=YES State=UP OverSubscribe=YES\n"
        (r / "slurm.conf").write_text(conf)
        self._spawn(["slurmctld", "-D", "-c"], "slurmctld")
        self._wait(lambda: self.run(["scontrol", "ping"]).returncode == 0, timeout_s, "slurmctld")
        for name in self.nodes:
            self._spawn(["slurmd", "-D", "-N", name], f"slurmd-{name}")
        self._wait(lambda: sorted(self.states().values()) == ["idle"] * len(self.nodes), timeout_s,
                   "every node idle")

    def _spawn(self, argv: list[str], name: str) -> None:
        log = open(self.root / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.root.glob("*.out")))
        raise RuntimeError(f"Slurm: {what} not ready within {timeout_s} s\n{logs}")

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                              timeout=kw.pop("timeout", 60), **kw)

    def states(self) -> dict[str, str]:
        done = self.run(["sinfo", "-h", "-N", "-o", "%N %T"])
        return dict(line.split() for line in done.stdout.splitlines() if line.strip())

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
