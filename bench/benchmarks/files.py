"""The generic file formats as a sweep reads them (``official``: the paper's released data set;
``jsonl``, ``parquet``: manifests and shards of any data set), and the opener every file-based
benchmark shares: ``ip2p.data.open_dataset`` on the spec's path, with its limit as a deterministic
subset (stable when the test set grows) and its category filter."""
from __future__ import annotations

from pathlib import Path

from ip2p.data.types import EditExample

from bench.benchmarks import Benchmark, get_benchmark, register_benchmark
from bench.spec import DatasetSpec, resolve_data_path


def spec_split(ds: DatasetSpec) -> str | None:
    """The split a benchmark's policy opens: ``spec``: the spec's (default ``test``); ``named``: the
    spec's when it names one, else the files as given; ``none``: no split."""
    policy = get_benchmark(ds.kind).split
    if policy == "spec" or (policy == "named" and "split" in ds.model_fields_set):
        return ds.split
    return None


def open_files(ds: DatasetSpec, base_dir: Path | None, on_bad_row: str, bad_rows: list | None) -> list[EditExample]:
    """The items of a dataset on disk, as the spec selects them (limit, seed, categories, options)."""
    from ip2p.data import open_dataset

    path = resolve_data_path(ds.path or "", base_dir)
    items = open_dataset(f"{ds.kind}:{path}", spec_split(ds), subset=ds.limit, subset_seed=ds.seed,
                         on_bad_row=on_bad_row, **dict(ds.options))
    if bad_rows is not None:
        bad_rows.extend(items.bad_rows.rows)
    items = list(items)
    if ds.categories:
        want = set(ds.categories)
        items = [ex for ex in items if ex.category in want]
    return items


register_benchmark(Benchmark("official", split="spec", description="the paper's released data set (test split by default)"))
register_benchmark(Benchmark("jsonl", description="a JSONL manifest: its rows, or the split the spec names"))
register_benchmark(Benchmark("parquet", description="parquet shards: all, or the split (file prefix) the spec names"))
