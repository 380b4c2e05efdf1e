"""One way to write a file that a reader must never see half-written: a temporary file beside it,
flushed to disk, then renamed over it. Reports, the saved node state, the metrics textfile (which
node_exporter may read at any moment), progress and the fleet's files all go through it."""

from __future__ import annotations

import os
from pathlib import Path

from gpusoak.errors import JournalError


def write_atomically(path: Path, data: str | bytes, what: str | None = None) -> None:
    """Write ``data`` to ``path`` whole or not at all; ``JournalError`` (naming ``what``) on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise JournalError(f"cannot write {what or path.name}: {err.strerror}", path=str(path)) from err
