"""NVIDIA's datasheet peaks for the GPUs gpusoak is run on: what the load's figures are a share of.

One table, used by ``bench/bench_load.py`` and the reports. Dense tensor-core TFLOP/s (where a
datasheet prints only the with-sparsity figure, footnoted "* With sparsity", dense is half of it,
marked ``sparse_halved``), FP32 without tensor cores, memory bandwidth in GB/s. Keyed by the
device name NVML and nvidia-smi report (``nvmlDeviceGetName``).

Sources (NVIDIA datasheets and product pages, as printed; the names from public nvidia-smi output):
- A100: "NVIDIA A100 Tensor Core GPU Datasheet" (nvidia-a100-datasheet-nvidia-us-2188504-web.pdf):
  FP16/BF16 Tensor Core "312 TFLOPS | 624 TFLOPS*", TF32 "156 TFLOPS | 312 TFLOPS*", FP32
  19.5 TFLOPS, bandwidth 80GB PCIe "1,935GB/s", 80GB SXM "2,039GB/s"; 40GB SXM 1,555 GB/s (the
  JUN21 datasheet, nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf).
- H100 SXM5, PCIe, NVL: "NVIDIA H100 Tensor Core GPU Datasheet" and nvidia.com/en-us/data-center/h100:
  FP16 Tensor Core "1,979 teraFLOPS*" (SXM), "1,513" (PCIe), "1,671" (NVL); TF32 "989" / 756 / "835";
  FP32 67 / 51 / 60; bandwidth "3.35TB/s" / "2TB/s" / "3.9TB/s". [U] the PCIe TF32 figure: the one
  copy found prints "56teraFLOPS*", taken as 756.
- H200 SXM, NVL: nvidia.com/en-us/data-center/h200 ("Preliminary specifications"): FP16 "1,979
  TFLOPS*" / "1,671 TFLOPS*", TF32 "989" / "835", FP32 67 / 60, "4.8TB/s", "141GB".
- B200 (HGX B200, per GPU): the Blackwell datasheet's per-GPU table, footnoted "All petaFLOPS and
  petaOPS are with Sparsity except FP64": FP16/BF16 "4.5 petaFLOPS", TF32 "2.2 petaFLOPS"; FP32 is
  the HGX B200 page's 600 TFLOPS over 8 GPUs; bandwidth 64 TB/s over 8. [U] NVIDIA's own pages
  disagree on whether the FP16 figure is dense: a bench share against it may read half.
- L40S: NVIDIA L40S datasheet: FP16/BF16 Tensor "362.05 | 733*", TF32 "183 | 366*", FP32 91.6,
  "864GB/s".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peak:
    part: str
    fp16_tflops: float  # dense, tensor cores (bf16 the same on every part here)
    tf32_tflops: float  # dense
    fp32_tflops: float  # without tensor cores
    memory_gbps: float
    sparse_halved: bool  # the datasheet printed the sparse figure; dense is its half
    unconfirmed: str = ""


PEAKS: dict[str, Peak] = {
    "NVIDIA A100-SXM4-40GB": Peak("A100 SXM4 40GB", 312.0, 156.0, 19.5, 1555.0, False),
    "NVIDIA A100-SXM4-80GB": Peak("A100 SXM4 80GB", 312.0, 156.0, 19.5, 2039.0, False),
    "NVIDIA A100 80GB PCIe": Peak("A100 PCIe 80GB", 312.0, 156.0, 19.5, 1935.0, False),
    "NVIDIA H100 80GB HBM3": Peak("H100 SXM5", 989.5, 494.5, 67.0, 3350.0, True),
    "NVIDIA H100 PCIe": Peak("H100 PCIe", 756.5, 378.0, 51.0, 2000.0, True, "TF32 figure misprinted in the copy found"),
    "NVIDIA H100 NVL": Peak("H100 NVL", 835.5, 417.5, 60.0, 3900.0, True),
    "NVIDIA H200": Peak("H200 SXM", 989.5, 494.5, 67.0, 4800.0, True, "preliminary specifications"),
    "NVIDIA H200 NVL": Peak("H200 NVL", 835.5, 417.5, 60.0, 4800.0, True, "preliminary specifications"),
    "NVIDIA B200": Peak("B200 (HGX)", 2250.0, 1100.0, 75.0, 8000.0, True,
                        "NVIDIA's pages disagree whether 4.5 PFLOPS FP16 is dense or sparse"),
    "NVIDIA L40S": Peak("L40S", 362.05, 183.0, 91.6, 864.0, False),
}


def peak_of(name: str | None) -> Peak | None:
    """The datasheet peak for a device name as NVML gives it (bytes or str), or None."""
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return PEAKS.get((name or "").strip())


def shares(name: str | None, tflops: dict[str, float], fill_gbps: float | None) -> dict[str, float] | None:
    """The load's figures as shares of the part's datasheet peaks (None: no peak recorded).
    ``tflops`` by kind name (float16, bfloat16, float32; float32 counts against the FP32 peak,
    or the TF32 one when ``float32-tf32`` is the key)."""
    p = peak_of(name)
    if p is None:
        return None
    out: dict[str, float] = {}
    for kind, peak in (("float16", p.fp16_tflops), ("bfloat16", p.fp16_tflops), ("float32", p.fp32_tflops),
                       ("float32-tf32", p.tf32_tflops)):
        if tflops.get(kind):
            out[kind] = round(tflops[kind] / peak, 4)
    if fill_gbps:
        out["fill"] = round(fill_gbps / p.memory_gbps, 4)
    return out
