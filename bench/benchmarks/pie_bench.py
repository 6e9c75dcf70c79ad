"""PIE-Bench (Ju et al. 2024, from PnP Inversion) as a benchmark: one release without splits, a
table per editing type, and outputs under ``annotation_images/<image_path>`` (the path its
``evaluate.py`` joins to a method's folder; PNG bytes under the release's file name, which PIL opens
by content). Scored as its evaluate.py scores: structure distance, background metrics, CLIP scores."""
from __future__ import annotations

from ip2p.data.types import EditExample

from bench.benchmarks import Benchmark, register_benchmark


def official_name(ex: EditExample) -> str | None:
    path = ex.metadata.get("image_path")
    return f"annotation_images/{path}" if path else None


PIE_BENCH = register_benchmark(Benchmark(
    "pie_bench", published=True, split="none", official_name=official_name,
    default_metrics=("pixel", "lpips", "structure", "pie"),
    description="PIE-Bench: per editing type, official file layout"))
