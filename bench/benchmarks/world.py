"""The small world as a benchmark: its split is generated in order (no path); ``limit`` keeps the
split's first N items, ``seed`` and ``categories`` choose what is generated."""
from __future__ import annotations

from pathlib import Path

from ip2p.data.types import EditExample

from bench.benchmarks import Benchmark, register_benchmark
from bench.spec import DatasetSpec


def open_world(ds: DatasetSpec, base_dir: Path | None, on_bad_row: str, bad_rows: list | None) -> list[EditExample]:
    from ip2p.data import open_dataset

    options = dict(ds.options)
    options.setdefault("seed", ds.seed)
    if ds.limit is not None:
        options.setdefault("n", ds.limit)
    if ds.categories:
        options.setdefault("categories", list(ds.categories))
    items = open_dataset(f"world:{ds.split}", on_bad_row=on_bad_row, **options)
    if bad_rows is not None:
        bad_rows.extend(items.bad_rows.rows)
    return list(items)


WORLD = register_benchmark(Benchmark(
    "world", split="spec", needs_path=False, open_items=open_world, default_metrics=("clip", "pixel"),
    description="the small world's generated split (no path)"))
