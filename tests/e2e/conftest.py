import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def gpusoak(*args, cwd=REPO, timeout=300, env=None):
    """The `gpusoak` command as a user runs it, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "gpusoak.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """One default run (simulated 8-GPU node, 20 FLR cycles each), shared by the checks below."""
    out = tmp_path_factory.mktemp("default-run")
    done = gpusoak("run", "--report-dir", out, "-q")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done, json.loads((out / "result.json").read_text())
