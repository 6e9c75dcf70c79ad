"""Hardware tables: the dense peak TFLOP/s of GPUs from their datasheets, and which entry and which
precision apply to a device and a dtype (the roofline share of ``bench.profiler`` and
``bench.pipeline_profile`` divides by it). Facts about devices only; nothing here measures."""
from __future__ import annotations

import torch

# Dense (no structured sparsity) peak TFLOP/s. NVIDIA's datasheets quote the tensor-core rates
# "with sparsity"; the dense figure is half. fp32 = plain FP32 (CUDA cores); tf32 = TF32 tensor
# cores, what cuDNN convolutions use for float32 by default (torch.backends.cudnn.allow_tf32).
#   A100 (SXM4 and PCIe alike): NVIDIA A100 Tensor Core GPU datasheet: FP32 19.5, TF32 156,
#       BF16/FP16 312 (624 with sparsity); the same figures in NVIDIA's Hopper architecture blog,
#       Table 3 (developer.nvidia.com/blog/nvidia-hopper-architecture-in-depth).
#   H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet, SXM column: FP32 67, TF32 989 and BF16/FP16
#       1,979 with sparsity; the unrounded dense figures (FP32 66.9, TF32 494.7, BF16/FP16 989.4)
#       as tabulated at glennklockwood.com/garden/processors/h100.
#   H100 PCIe: the same datasheet, PCIe column: FP32 51, TF32 756 and BF16/FP16 1,513 with sparsity.
#   H200 (SXM): NVIDIA H200 Tensor Core GPU datasheet, SXM column: the H100 SXM's compute (FP32 67,
#       BF16/FP16 1,979 with sparsity) with 141 GB HBM3e at 4.8 TB/s (/work/.library/device/H200.md
#       says the same).
#   H200 NVL: the same datasheet, NVL column: FP32 60, TF32 835, BF16/FP16 1,671 with sparsity (not
#       checked against a second source here).
# Measured on this workplace's H200 (/work/.library/device/KINDS.md, 2026-10-28 and 2026-11-04): an
# 8192^3 bf16 matmul through PyTorch ran at 769-798 TFLOP/s, about 80% of the dense peak;
# bench/perf/gpu_run.py measures it again and reports the share of both.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "H100 SXM": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
}


def peak_entry(device_name: str) -> str | None:
    """The ``PEAK_TFLOPS`` key for a CUDA device name (``torch.cuda.get_device_name``), or None."""
    n = device_name.lower()
    if "h200" in n:
        return "H200 NVL" if "nvl" in n else "H200"
    if "h100" in n:
        if "pcie" in n:
            return "H100 PCIe"
        return None if "nvl" in n else "H100 SXM"
    if "a100" in n:
        return "A100"
    return None


def peak_precision(dtype: str) -> str:
    """Which peak applies to ``dtype``: bf16/fp16 as such; fp32 is TF32 when cuDNN may use it."""
    if dtype == "fp32":
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    return dtype


__all__ = ["PEAK_TFLOPS", "peak_entry", "peak_precision"]
