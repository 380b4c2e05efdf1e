"""The one protocol between the soak and its load child (``python -m gpusoak.load``).

The child's verdict is its last line of output: one JSON document with ``verdict`` (one of
VERDICTS) and ``exit``, the status it exits with. The exit statuses are chosen apart from the ones
Python and its tools give on their own: 1 for an uncaught exception (Python's documentation,
sys.exit: "most systems require it to be in the range 0–127 ... 1 for all other kind of errors"),
2 for a command-line error (argparse's ``ArgumentParser.error`` exits 2), 120 when flushing
stdout fails at exit (Python's Py_FinalizeEx), and 128+N or a negative status for a signal. So a
status alone can never be read as the child's verdict, and the soak believes a document only when
its ``exit`` is the status the child really exited with: anything else (no document, a document
and then a crash, a status the child never gives) is gpusoak's own failure (``child_crashed``),
never the GPU's.

This module imports nothing heavy: the soak's side must never import cupy or numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

OK, WRONG, BAD_OPTION, UNAVAILABLE, GPU_FAILED = "ok", "wrong_result", "bad_option", "unavailable", "gpu_failed"
# verdict: exit status (0, and 10 upwards: none of Python's own)
EXIT = {OK: 0, WRONG: 10, BAD_OPTION: 11, UNAVAILABLE: 12, GPU_FAILED: 13}
VERDICTS = tuple(EXIT)
# The most of a GPU's free memory the load child fills: the CUDA context, cuBLAS's workspace and
# the GEMM operands need the rest. The option table (gpusoak/options.py) and the child share it.
MAX_FRACTION = 0.98
# gpusoak could not load the GPU: never the GPU's failure.
TOOL_ERRORS = frozenset({BAD_OPTION, UNAVAILABLE})


def verdict_of(doc: dict | None, returncode: int | None) -> str | None:
    """The child's verdict, if its document and its exit status agree; None otherwise."""
    if not isinstance(doc, dict):
        return None
    verdict = doc.get("verdict")
    if verdict not in EXIT or doc.get("exit") != EXIT[verdict] or returncode != EXIT[verdict]:
        return None
    return verdict


# What the soak makes of one child's document (or of its absence): journaled as the cycle's
# ``load`` and ``post_check``, and read back by the verdict.
@dataclass(frozen=True)
class LoadSummary:
    exit: int | None  # None: the child did not finish in time
    verdict: str | None = None  # the child's own (VERDICTS), when its document and status agreed
    pid: int | None = None
    error: str | None = None
    tflops_fp32: float | None = None
    tflops_fp16: float | None = None
    gemm_mismatches: int = 0
    vram_bytes: int = 0
    mismatched_words: int = 0
    backed_off: bool = False
    refusal: str | None = None  # why the load was not started, or gpusoak's child broke (a reason suffix)
    link_speed: str | None = None  # current_link_speed the child read under load; None: no such file
    link_width: int | None = None
    link_error: str | None = None  # the child's link read failed (its errno)
    # The window's figures (gpusoak/load/checks.py): work over the batches' device time, the
    # share of the window the device was busy, and what NVML read meanwhile (None: not measured).
    tflops_bf16: float | None = None
    window_s: float | None = None
    busy_share: float | None = None
    vram_fill_gbps: float | None = None
    vram_passes: float | None = None
    first_bad: str | None = None  # where the first wrong element or word was
    power_w_mean: float | None = None
    power_w_max: float | None = None
    sm_clock_mhz_min: float | None = None
    temperature_c_max: float | None = None
    utilisation_pct_mean: float | None = None
    telemetry: str | None = None  # why NVML readings are missing, when they are
    device_name: str | None = None
    fp16_peak_share: float | None = None  # of the part's dense datasheet peak (gpusoak/load/peaks.py)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSummary:
        """From a journal record; keys another gpusoak version wrote and this one lacks are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def ok(self) -> bool:
        return self.verdict == OK and self.refusal is None

    @property
    def tool_error(self) -> bool:
        """gpusoak could not load the GPU (no child started, a child that crashed or printed no
        report, a bad option, no cupy): never the GPU's failure."""
        return self.refusal is not None or self.verdict in TOOL_ERRORS

    def reason(self, phase: str) -> str:
        """``load_...`` before the reset, ``post_check_...`` after it."""
        if self.refusal is not None:
            return f"{phase}_{self.refusal}"
        if self.exit is None:
            return f"{phase}_hung"
        if self.verdict == WRONG:
            return f"{phase}_{'compute' if self.gemm_mismatches else 'memory'}_mismatch"
        return f"{phase}_{self.verdict or 'error'}"

    def detail(self) -> str:
        if self.error:
            return self.error
        where = f"; first at {self.first_bad}" if self.first_bad else ""
        return (f"{self.gemm_mismatches} wrong product elements, {self.mismatched_words} mismatched words in "
                f"{self.vram_bytes} bytes{where}")
