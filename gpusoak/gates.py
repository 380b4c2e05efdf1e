"""The health gates' limits file (``--gates FILE``): TOML, read here; the gates themselves are
gpusoak/verdict/gates.py."""

from __future__ import annotations

import sys
from pathlib import Path

from gpusoak.errors import UsageError
from gpusoak.verdict.gates import GateLimits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load(path: Path | str | None) -> GateLimits:
    """The limits in ``path`` (the defaults without one)."""
    if path is None:
        return GateLimits()
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"cannot read gate limits: {err}", path=str(path)) from err
    return GateLimits.from_table(data.get("gates", data), str(path))
