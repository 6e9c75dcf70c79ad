"""The items of a sweep: a spec's ``dataset`` section opened through ``ip2p.data.open_dataset``.

Each dataset kind opens as its benchmark record says (``bench.benchmarks``): ``limit`` keeps the
first N items of the small world's split (its items are generated in order) and, for files, a
deterministic subset of N that stays stable when the test set grows.
"""
from __future__ import annotations

from pathlib import Path

from ip2p.data.types import EditExample
from ip2p.errors import DataRowError

from bench.spec import DatasetSpec


def load_items(ds: DatasetSpec, base_dir: Path | None = None, *, on_bad_row: str = "raise",
               bad_rows: list | None = None) -> list[EditExample]:
    """Every item the spec's dataset selects, in dataset order, with unique item ids. Rows skipped
    under ``on_bad_row="skip"`` are appended to ``bad_rows`` (``ip2p.data.rows.BadRow``) when given."""
    import ip2p.data.testsets  # noqa: F401  (registers the test-set kinds)

    from bench.benchmarks import get_benchmark
    from bench.benchmarks.files import open_files

    bm = get_benchmark(ds.kind)  # how this kind opens: its own opener, else the files as the spec selects them
    items = list((bm.open_items or open_files)(ds, base_dir, on_bad_row, bad_rows))
    if not items:
        raise DataRowError(f"dataset {ds.kind}:{ds.path or ds.split} selected no items (check split, limit, categories)")
    seen: dict[str, str] = {}
    for ex in items:
        if ex.item_id in seen:
            raise DataRowError(f"item id {ex.item_id!r} appears twice ({seen[ex.item_id]} and {ex.source}); "
                               "result rows are keyed by item id")
        seen[ex.item_id] = ex.source
    return items
