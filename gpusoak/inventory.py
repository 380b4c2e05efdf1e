"""The node's GPU inventory across reboots: the file ``--inventory`` names (on a real node,
``/var/lib/gpusoak/inventory.json`` by default for a destructive run).

Each run reads the inventory the node kept, and records it in its journal header beside the GPUs
it found now; the verdict compares them (gpusoak/verdict/inventory.py). The file is rewritten with
what was found only when no GPU of it is missing: a GPU that fell off the bus stays in the
inventory, and keeps failing the node's runs, until someone who took it out on purpose removes
the file (or the GPU's entry)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from gpusoak.errors import GpusoakError
from gpusoak.files import write_atomically
from gpusoak.model import PciAddress

DEFAULT_INVENTORY = Path("/var/lib/gpusoak/inventory.json")
VERSION = 1


def read(path: Path) -> dict[str, Any] | None:
    """The inventory kept at ``path`` ({"source", "run_id", "gpus": [bdf, ...]}), or None where
    there is none yet (the node's first run). A file gpusoak cannot read is an error, not an empty
    inventory: that would hide every GPU it lists."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GpusoakError(f"cannot read the inventory {path}: {err.strerror}") from err
    try:
        doc = json.loads(text)
        gpus = [str(PciAddress.parse(str(g["bdf"]))) for g in doc["gpus"]]
    except (ValueError, KeyError, TypeError) as err:  # InvalidAddress is a ValueError
        raise GpusoakError(f"the inventory {path} is not one gpusoak wrote ({err}): fix or remove it") from err
    return {"source": str(path), "run_id": doc.get("run_id"), "written_at": doc.get("written_at"), "gpus": gpus}


def write(path: Path, run_id: str, node_name: str, found: list[dict[str, Any]]) -> None:
    doc = {"version": VERSION, "node": node_name, "run_id": run_id,
           "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "gpus": found}
    write_atomically(path, json.dumps(doc, indent=1) + "\n", what=f"the inventory {path}")
