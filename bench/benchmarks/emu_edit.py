"""Emu Edit's test set (Sheynin et al. 2024) as a benchmark: its parquet shards (the split the spec
names, else all), a table per task, outputs under ``<split>/<task>/<idx>.png`` (the item id)."""
from __future__ import annotations

from ip2p.data.types import EditExample

from bench.benchmarks import Benchmark, register_benchmark


def official_name(ex: EditExample) -> str | None:
    return f"{ex.item_id}.png"


EMU_EDIT = register_benchmark(Benchmark(
    "emu_edit", published=True, official_name=official_name, default_metrics=("clip", "pixel", "dino"),
    description="Emu Edit test set: per task, official file layout"))
