"""The soak's side of the load: run ``python -m gpusoak.load`` as a child through the node's runner.

This module never imports cupy or numpy: the soak's process must not hold a CUDA context, which
would block the very reset it is about to make. The child has exited before this returns.
"""

from __future__ import annotations

import json
import sys

from gpusoak.host.node import Node
from gpusoak.load import protocol
from gpusoak.load.protocol import LoadSummary
from gpusoak.model import PciAddress

NO_UUID = "no_gpu_uuid"
CHILD_CRASHED = "child_crashed"  # no verdict whose status the child really exited with: an import error, a crash


def load_env(uuid: str) -> dict[str, str]:
    """The child sees its own GPU alone. CUDA enumerates, and its driver opens, every GPU that is
    visible; CUDA_VISIBLE_DEVICES takes "UUID strings ... in the same format as given by
    nvidia-smi" (CUDA Programming Guide, 5.2 CUDA Environment Variables, CUDA_VISIBLE_DEVICES).
    Without it, a load child holds /dev/nvidiaN of every GPU, and in a parallel run each child
    would hold every other GPU's reset up [I]. CUDA_DEVICE_ORDER=PCI_BUS_ID (same section) keeps
    indices in bus order should anything in the child print or use one."""
    return {"CUDA_VISIBLE_DEVICES": uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def run_load(node: Node, bdf: PciAddress, seconds: float, fraction: float, uuid: str | None) -> LoadSummary:
    """The load child for the GPU whose UUID is ``uuid`` (the baseline's); without one it is
    refused with the reason rather than run with every GPU visible."""
    if not uuid:
        return LoadSummary(None, protocol.UNAVAILABLE, refusal=NO_UUID, error=(
            f"no UUID for {bdf} in the baseline (NVML could not say): a load child without "
            "CUDA_VISIBLE_DEVICES=<its UUID> would open every GPU on the node"))
    argv = [sys.executable, "-m", "gpusoak.load", "--bdf", str(bdf), "--seconds", f"{seconds:g}",
            "--fraction", f"{fraction:g}", "--sysfs-root", str(node.sysfs.root)]
    result = node.runner.run(argv, timeout_s=2 * seconds + 120, env=load_env(uuid))
    if result.timed_out:
        return LoadSummary(None, error=f"the load did not finish within {2 * seconds + 120:g} s")
    doc = _last_json(result.stdout)
    verdict = protocol.verdict_of(doc, result.returncode)
    if verdict is None or doc is None:
        # No verdict, or one the child did not exit with: it crashed (an uncaught exception exits
        # 1, a failed flush 120), and nothing is known of the GPU.
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        said = f" (its last report said {doc.get('verdict')!r}, exit {doc.get('exit')})" if doc else ""
        return LoadSummary(result.returncode, refusal=CHILD_CRASHED,
                           error=f"gpusoak's load child exited {result.returncode} without its report{said}: {last}")
    return summary_of(doc, result.returncode, verdict)


def summary_of(doc: dict, returncode: int | None, verdict: str) -> LoadSummary:
    """The soak's summary of a verified load document (its figures, flattened for the journal)."""
    gemm = {g.get("kind"): g for g in doc.get("gemm", []) if isinstance(g, dict)}
    vram, link, window = doc.get("vram") or {}, doc.get("link") or {}, doc.get("window") or {}
    tele = doc.get("telemetry") or {}
    shares = doc.get("peak_share") or {}

    def reading(name: str, stat: str) -> float | None:
        value = tele.get(name)
        return value.get(stat) if isinstance(value, dict) else None

    return LoadSummary(
        exit=returncode, verdict=verdict, pid=doc.get("pid"), error=doc.get("error"),
        tflops_fp32=gemm.get("float32", {}).get("tflops"), tflops_fp16=gemm.get("float16", {}).get("tflops"),
        tflops_bf16=gemm.get("bfloat16", {}).get("tflops"),
        gemm_mismatches=sum(g.get("mismatches", 0) + g.get("freivalds_rows", 0) + g.get("freivalds_cols", 0)
                            for g in gemm.values()),
        vram_bytes=vram.get("bytes_total", 0), mismatched_words=vram.get("mismatched_words", 0),
        backed_off=vram.get("backed_off", False), link_speed=link.get("current_speed"),
        link_width=link.get("current_width"), link_error=link.get("error"),
        window_s=window.get("seconds"), busy_share=window.get("busy_share"),
        vram_fill_gbps=vram.get("fill_gbps"), vram_passes=vram.get("passes"), first_bad=_first_bad(doc),
        power_w_mean=reading("power_w", "mean"), power_w_max=reading("power_w", "max"),
        sm_clock_mhz_min=reading("sm_clock_mhz", "min"), temperature_c_max=reading("temperature_c", "max"),
        utilisation_pct_mean=reading("utilisation_pct", "mean"),
        telemetry=tele.get("unavailable") or ("; ".join(f"{k}: {v}" for k, v in (tele.get("missing") or {}).items())
                                              or None),
        device_name=doc.get("name"), fp16_peak_share=shares.get("float16"))


def _first_bad(doc: dict) -> str | None:
    for g in doc.get("gemm", []):
        if isinstance(g, dict) and g.get("first_bad"):
            product, row, col = (list(g["first_bad"]) + [None, None, None])[:3]
            return f"{g.get('kind')} product {product}: row {row}, column {col}"
    word = (doc.get("vram") or {}).get("first_bad_word")
    return None if word is None else f"VRAM word {word} (byte offset {4 * word:#x} in the load's allocation)"


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None
