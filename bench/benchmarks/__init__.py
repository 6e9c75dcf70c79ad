"""The benchmark registry: a spec's ``dataset.kind`` -> how a sweep opens, tables and exports it.

Each benchmark is a registered record (``Benchmark``) in a module of its own
(``bench.benchmarks.world``, ``magicbrush``, ``pie_bench``, ``emu_edit``, ``editworld``,
``files`` for the generic formats): its split policy, whether it needs a path, its table views,
its official output file names and its default metric groups. A sweep looks the record up by the
dataset kind; a kind with no record of its own (one a plugin registers with
``ip2p.data.registry.register_dataset_kind``) gets ``GENERIC``: files as given, a per-category
table, no official names. A plugin may register its own record with ``register_benchmark``.

Two hooks of ``bench.sweep.run_sweep`` call this package: ``turn_chain`` (``bench.benchmarks.turns``,
MagicBrush's iterative turns) before the work and ``finish_run`` after it: the tables
(``bench.benchmarks.tables``, to ``<run>/benchmark/tables.csv``) and the outputs written again
under the benchmark's own file names (``bench.benchmarks.official``, to
``<run>/benchmark/official/<setting>/``; ``index.json`` maps folders to settings).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import pandas as pd

from ip2p.data.types import EditExample

from bench.benchmarks.official import BENCHMARK_DIR, export_official_names as _export, setting_folder  # noqa: F401
from bench.benchmarks.turns import TurnChain, turn_chain  # noqa: F401

# views(df, items, benchmark_spec) -> {view name: rows}; pooled views hold one category each
Views = Callable[[pd.DataFrame, Sequence[EditExample], Any], dict]


def per_category(df: pd.DataFrame, items: Sequence[EditExample], benchmark_spec) -> dict[str, pd.DataFrame]:
    """The default view: every row, grouped by the items' categories."""
    return {"per_category": df}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark (or dataset kind) as a sweep treats it.

    ``split``: ``"spec"`` (the spec's split, default ``test``), ``"named"`` (the spec's split only when
    it names one; else the files as given) or ``"none"`` (the release has no splits).
    ``open_items(ds, base_dir, on_bad_row)``: its own opener (None: ``bench.benchmarks.files.open_files``).
    ``views``: its tables (``bench.benchmarks.tables``); ``official_name(item)``: the path its own tools
    expect for an item's output (None: no official names); ``default_metrics``: the metric groups its
    authors score with (its shipped suite computes them); ``authors_rescore``: columns its authors'
    script computes differently from ours, recomputed under ``scoring: authors``."""

    name: str
    split: Literal["spec", "named", "none"] = "named"
    needs_path: bool = True
    open_items: Callable[..., Any] | None = None
    views: Views = per_category
    official_name: Callable[[EditExample], str | None] | None = None
    default_metrics: tuple[str, ...] = ("clip", "pixel")
    published: bool = False  # a published test set: ``dataset.options.scoring`` chooses authors' or ours
    authors_rescore: Callable[..., None] | None = None  # (edited, target, metric row) -> row fixed in place
    description: str = ""


GENERIC = Benchmark("generic", description="any other dataset kind: files as given, per-category table")
_BENCHMARKS: dict[str, Benchmark] = {}
_BUILTIN_MODULES = ("bench.benchmarks.world", "bench.benchmarks.files", "bench.benchmarks.magicbrush",
                    "bench.benchmarks.pie_bench", "bench.benchmarks.emu_edit", "bench.benchmarks.editworld")
_loaded = False


def register_benchmark(bm: Benchmark, *, replace: bool = False) -> Benchmark:
    """Make ``bm`` the record of dataset kind ``bm.name``."""
    if bm.name in _BENCHMARKS and not replace and _BENCHMARKS[bm.name] != bm:
        raise ValueError(f"benchmark {bm.name!r} is already registered; pass replace=True to override it")
    _BENCHMARKS[bm.name] = bm
    return bm


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in _BUILTIN_MODULES:
            importlib.import_module(m)


def get_benchmark(kind: str) -> Benchmark:
    """The record of dataset kind ``kind`` (``GENERIC`` for a kind without one)."""
    _load_builtin()
    return _BENCHMARKS.get(kind, GENERIC)


def registered_benchmarks() -> dict[str, Benchmark]:
    _load_builtin()
    return dict(_BENCHMARKS)


def official_name(kind: str, ex: EditExample) -> str | None:
    """The path (relative to a setting's folder) the benchmark's own tools expect for this item's output."""
    name_of = get_benchmark(kind).official_name
    return name_of(ex) if name_of is not None else None


def benchmark_views(kind: str, df: pd.DataFrame, items: Sequence[EditExample], benchmark_spec) -> dict[str, pd.DataFrame]:
    return get_benchmark(kind).views(df, items, benchmark_spec)


def benchmark_tables(kind: str, df: pd.DataFrame, items: Sequence[EditExample], benchmark_spec,
                     n_boot: int = 1000) -> pd.DataFrame:
    """Every view's aggregate in one frame, with a ``view`` column and ``<metric>_n_missing``."""
    from bench.benchmarks.tables import view_tables

    return view_tables(benchmark_views(kind, df, items, benchmark_spec), n_boot=n_boot)


def export_official_names(run_dir: Path, kind: str, df: pd.DataFrame, items: Sequence[EditExample]) -> dict[str, Any]:
    """Copy every stored output to its official name (``bench.benchmarks.official``); returns the index."""
    return _export(run_dir, lambda ex: official_name(kind, ex), df, items)


def finish_run(run_dir: Path, spec, items: Sequence[EditExample]) -> dict[str, Path]:
    """After a sweep (rank 0): the benchmark tables and, for a published test set, its official names."""
    from bench.store import current_rows, load_results
    from ip2p.util.io import atomic_write_text

    df, _ = current_rows(run_dir, load_results(run_dir))
    if df.empty:
        return {}
    kind = spec.dataset.kind
    out: dict[str, Path] = {}
    tables = benchmark_tables(kind, df, items, spec.benchmark)
    if not tables.empty:
        out["tables"] = atomic_write_text(Path(run_dir) / BENCHMARK_DIR / "tables.csv", tables.to_csv(index=False))
    if spec.benchmark.official_names and spec.save_images and get_benchmark(kind).official_name is not None:
        export_official_names(run_dir, kind, df, items)
        out["official"] = Path(run_dir) / BENCHMARK_DIR / "official"
    return out
