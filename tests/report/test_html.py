"""report.html: what comes from the node is shown as text, never run as markup."""

import html
import json
import re

from gpusoak.journal import Journal
from gpusoak.model import CycleResult, Finding, KernelEvent
from tests.e2e.conftest import gpusoak

EVIL = "<script>alert(1)</script>"


def test_kernel_line_with_script_shows_as_text(tmp_path):
    line = f"NVRM: Xid (PCI:0000:65:00): 79, pid=1234, name={EVIL}, GPU has fallen off the bus."
    j = Journal(tmp_path / "journal.jsonl", {"run_id": "r1", "hostname": f"node-{EVIL}", "backend": "sim",
                                             "gpus": [{"bdf": "0000:65:00.0", "uuid": f"GPU-{EVIL}"}]})
    j.append(CycleResult(run_id="r1", bdf="0000:65:00.0", uuid=f"GPU-{EVIL}", action="flr", cycle=1,
                         outcome="failed", started_at="2026-11-21T00:00:00Z", duration_s=1.0,
                         findings=(Finding("xid_79", line),),
                         events=(KernelEvent("xid", line, pci="0000:65:00", xid=79),)))
    j.close()
    done = gpusoak("report", tmp_path / "journal.jsonl")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    page = (tmp_path / "report.html").read_text()

    # Our summary: escaped in the page itself.
    summary = page[page.index('<div id="gpusoak-summary">'):page.index("</table>", page.index('<div id="gpusoak-summary">'))]
    assert EVIL not in summary and html.escape(EVIL) in summary

    # pytest-html's row log: stored as JSON in an attribute and put into the page with innerHTML,
    # so after the attribute is decoded it must still be escaped once.
    blob = json.loads(html.unescape(re.search(r'data-jsonblob="([^"]*)"', page).group(1)))
    logs = " ".join(t["log"] for tests in blob["tests"].values() for t in tests)
    assert html.escape(EVIL) in logs and EVIL not in logs
    # The only <script> elements are pytest-html's own.
    assert page.count("<script") == page.count("</script>") and "alert(1)</script>" not in page
