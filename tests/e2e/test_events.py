"""`gpusoak events` as a user runs it."""

import json
import subprocess
import sys

from tests.e2e.conftest import REPO, gpusoak

LOG = """\
[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0
               NVRM: (PCI ID: 10de:26b5) installed in this system has
               NVRM: fallen off the bus and is not responding to commands.
[ 1850.000001] e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex
[ 1851.000001] NVRM: Xid (PCI:0000:65:00): 48, pid=2, name=b, An uncorrectable double bit error
[ 1852.000001] pcieport 0000:64:01.0: AER: Uncorrectable (Fatal) error message received from 0000:65:00.0
"""


def test_json_lines(tmp_path):
    (tmp_path / "dmesg.txt").write_text(LOG)
    done = gpusoak("events", "--json", tmp_path / "dmesg.txt")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in done.stdout.splitlines()]
    assert [(r["line"], r["kind"], r["pci"], r["xid"], r["severity"], r["action"]) for r in rows] == [
        (1, "fell_off_bus", "0000:b3:00.0", None, None, "RESTART_BM"),
        (5, "xid", "0000:65:00", 48, None, "WORKFLOW_XID_48"),
        (6, "aer", "0000:65:00.0", None, "fatal", None),
    ]
    assert set(rows[0]) >= {"line", "kind", "pci", "xid", "severity", "action", "text"}


def test_table_from_stdin():
    done = subprocess.run([sys.executable, "-m", "gpusoak.cli", "events", "-"], input=LOG, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    header, *rows = done.stdout.splitlines()
    assert header.split()[:4] == ["LINE", "KIND", "PCI", "XID"] and len(rows) == 3
    assert rows[1].split()[:4] == ["5", "xid", "0000:65:00", "48"]


def test_unreadable_input_is_a_clear_error(tmp_path):
    done = gpusoak("events", tmp_path / "missing.log")
    assert done.returncode == 2 and "cannot read" in done.stderr and "No such file" in done.stderr
    done = gpusoak("events", tmp_path)
    assert done.returncode == 2 and "Is a directory" in done.stderr


def test_json_lines_are_what_json_dumps_writes(tmp_path):
    """The hand-built JSON of `events --json` against the standard encoder, on awkward text."""
    from gpusoak.cli import _event_json
    from gpusoak.model import KernelEvent

    for e in [KernelEvent("xid", 'quote " backslash \\ tab \t nul \x00 é \ud83d', pci="0000:65:00", xid=79,
                          line=3, stamp="12.5", action="RESTART_BM"),
              KernelEvent("aer", "x", severity="fatal", line=1)]:
        assert json.loads(_event_json(e)) == {"line": e.line, "kind": e.kind, "pci": e.pci, "xid": e.xid,
                                              "severity": e.severity, "action": e.action, "text": e.text,
                                              "timestamp": e.stamp}
