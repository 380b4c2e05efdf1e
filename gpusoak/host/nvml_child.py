"""``python -m gpusoak.host.nvml_child OP [BDF]``: one NVML query, in a process of its own.

The soak process never attaches NVML (see ``gpusoak.host.nvml.NvmlClient``). This child initialises
NVML, takes the one GPU it is asked about with ``nvmlDeviceGetHandleByPciBusId`` (the UUID and
index lookups may attach other GPUs while they search), answers with one JSON line and exits, which
closes every device file it opened. Node-level questions initialise with NVML_INIT_FLAG_NO_ATTACH.

Output: ``{"ok": true, "result": ...}`` or ``{"ok": false, "kind": ..., "message": ..., "code": ...}``
with kind ``unavailable`` (no library or driver), ``denied`` or ``failure``. Exit 0 whenever a
document was printed; anything else (a crash, an import error) is gpusoak's failure, not the GPU's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

from gpusoak.errors import AccessDenied, GpusoakError, NvmlFailure, NvmlUnavailable
from gpusoak.host.nvml import DRIVER_NOT_LOADED, NA, Nvml, NvmlHealth
from gpusoak.model import PciAddress

OPS = ("driver", "health", "minor", "pids", "arch", "fabric", "peers")


def answer(op: str, bdf_text: str | None, lib: Any = None) -> dict[str, Any]:
    """The document for one query; ``lib`` is pynvml, or the simulator's pynvml-compatible object."""
    if op not in OPS or (op != "driver") != (bdf_text is not None):
        return {"ok": False, "kind": "failure", "message": f"usage: {OPS} [BDF]; got {op!r} {bdf_text!r}"}
    try:
        nvml = Nvml.open(lib, attach=op != "driver")
    except NvmlUnavailable as err:
        if op == "health" and _driver_not_loaded(err):
            # The soak unloaded the driver (or it failed to load back): that is the GPU's state
            # to judge, not NVML being unavailable.
            return {"ok": True, "result": asdict(NvmlHealth(str(PciAddress.parse(bdf_text or "")),
                                                            DRIVER_NOT_LOADED))}
        return {"ok": False, "kind": "unavailable", "message": str(err)}
    try:
        return {"ok": True, "result": _query(nvml, op, bdf_text)}
    except NvmlUnavailable as err:
        return {"ok": False, "kind": "unavailable", "message": str(err)}
    except AccessDenied as err:
        return {"ok": False, "kind": "denied", "message": str(err)}
    except NvmlFailure as err:
        return {"ok": False, "kind": "failure", "message": str(err), "code": err.code}
    except GpusoakError as err:
        return {"ok": False, "kind": "failure", "message": str(err)}
    except nvml.lib.NVMLError as err:  # GpuIsLost / ResetRequired outside health()
        return {"ok": False, "kind": "failure", "message": f"NVML: {err}", "code": getattr(err, "value", None)}
    finally:
        nvml.close()


def _query(nvml: Nvml, op: str, bdf_text: str | None) -> Any:
    if op == "driver":
        version = nvml.call("nvmlSystemGetDriverVersion")
        return None if isinstance(version, NA) else _text(version)
    bdf = PciAddress.parse(bdf_text or "")
    if op == "health":
        return asdict(nvml.health(bdf))
    handle = nvml.handle(bdf)
    if isinstance(handle, NA):
        raise NvmlFailure(handle.reason)
    if op == "fabric":
        info = nvml.fabric_info(handle)
        return None if isinstance(info, NA) else info
    if op == "peers":
        peers = nvml.nvlink_peers(handle)
        if isinstance(peers, NA):
            raise NvmlFailure(peers.reason)
        return peers
    if op == "minor":
        value = nvml.call("nvmlDeviceGetMinorNumber", handle)
    elif op == "arch":
        value = nvml.call("nvmlDeviceGetArchitecture", handle)
    else:
        procs = nvml.call("nvmlDeviceGetComputeRunningProcesses", handle)
        value = procs if isinstance(procs, NA) else sorted(int(p.pid) for p in procs)
    if isinstance(value, NA):
        raise NvmlFailure(value.reason)
    return value if isinstance(value, list) else int(value)


def _driver_not_loaded(err: NvmlUnavailable) -> bool:
    return getattr(err.__cause__, "value", None) == 9  # NVML_ERROR_DRIVER_NOT_LOADED (nvml.h)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    doc = answer(args[0] if args else "", args[1] if len(args) > 1 else None)
    print(json.dumps(doc, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
