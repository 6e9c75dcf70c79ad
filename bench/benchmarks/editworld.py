"""EditWorld (Yang et al. 2024) as a benchmark: one release without splits, tables per instruction
category and per branch (text-to-image / video), outputs under ``<item id>.png``."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ip2p.data.types import EditExample

from bench.benchmarks import Benchmark, register_benchmark


def views(df: pd.DataFrame, items: Sequence[EditExample], benchmark_spec) -> dict[str, pd.DataFrame]:
    branch = {ex.item_id: ex.metadata.get("branch") or "unknown" for ex in items}
    return {"per_category": df, "per_branch": df.assign(category=df["item_id"].map(branch))}


def official_name(ex: EditExample) -> str | None:
    return f"{ex.item_id}.png"


EDITWORLD = register_benchmark(Benchmark(
    "editworld", published=True, split="none", views=views, official_name=official_name,
    default_metrics=("clip", "lpips", "pixel", "target"),
    description="EditWorld: per instruction category and per branch, official file layout"))
