"""The verdict has one home (gpusoak/verdict/): pure functions that import nothing of the engine,
and whose class table docs/verdict.md restates in the same order."""

import re
import subprocess
import sys
from pathlib import Path

from gpusoak.verdict import score

REPO = Path(__file__).resolve().parents[1]
ENGINE = ("gpusoak.soak", "gpusoak.schedule", "gpusoak.verify", "gpusoak.actions", "gpusoak.plugin",
          "gpusoak.host.node", "gpusoak.host.sysfs", "gpusoak.host.nvml", "gpusoak.host.commands",
          "gpusoak.load.child", "gpusoak.sim", "subprocess")


def test_the_verdict_imports_nothing_of_the_engine():
    code = ("import sys\nimport gpusoak.verdict.score, gpusoak.verdict.events, gpusoak.verdict.refusals, "
            "gpusoak.verdict.inventory, gpusoak.verdict.sprt, gpusoak.verdict.sequences, gpusoak.verdict.gates, "
            "gpusoak.verdict.trends\n"
            "print('\\n'.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(done.stdout.split())
    assert [m for m in loaded if m.startswith(ENGINE)] == []


def test_docs_list_the_reliability_classes_in_the_order_the_rules_try_them():
    text = (REPO / "docs" / "verdict.md").read_text()
    section = text.split("## Reliability classes", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.M)
    assert documented == [cls for cls, _ in score.RELIABILITY_RULES]
    assert set(documented) == set(score.RELIABILITY_CLASSES)


def test_the_reports_and_the_fleet_import_the_verdict_not_the_engine():
    code = ("import sys\nimport gpusoak.report.build, gpusoak.report.result_json, gpusoak.report.junit, "
            "gpusoak.fleet, gpusoak.metrics\nprint('\\n'.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(done.stdout.split())
    assert [m for m in loaded if m.startswith(("gpusoak.soak", "gpusoak.schedule", "gpusoak.verify",
                                               "gpusoak.actions", "gpusoak.plugin", "gpusoak.sim"))] == []
