"""The items of a sweep: a spec's ``dataset`` section opened through ``ip2p.data.open_dataset``.

``limit`` keeps the first N items of the small world's split (its items are generated in order)
and, for files, a deterministic subset of N that stays stable when the test set grows.
"""
from __future__ import annotations

from pathlib import Path

from ip2p.data.types import EditExample
from ip2p.errors import DataRowError

from bench.spec import DatasetSpec, resolve_data_path


def load_items(ds: DatasetSpec, base_dir: Path | None = None, *, on_bad_row: str = "raise",
               bad_rows: list | None = None) -> list[EditExample]:
    """Every item the spec's dataset selects, in dataset order, with unique item ids. Rows skipped
    under ``on_bad_row="skip"`` are appended to ``bad_rows`` (``ip2p.data.rows.BadRow``) when given."""
    from ip2p.data import open_dataset
    import ip2p.data.testsets  # noqa: F401  (registers the test-set kinds)

    options = dict(ds.options)
    if ds.kind == "world":
        options.setdefault("seed", ds.seed)
        if ds.limit is not None:
            options.setdefault("n", ds.limit)
        if ds.categories:
            options.setdefault("categories", list(ds.categories))
        items = open_dataset(f"world:{ds.split}", on_bad_row=on_bad_row, **options)
        if bad_rows is not None:
            bad_rows.extend(items.bad_rows.rows)
    else:
        path = resolve_data_path(ds.path or "", base_dir)
        # official: the test split by default; single-split formats: the files as given unless
        # the spec names a split; PIE-Bench and EditWorld have no splits
        split = ds.split if ("split" in ds.model_fields_set or ds.kind == "official") else None
        if ds.kind in ("pie_bench", "editworld"):
            split = None
        items = open_dataset(f"{ds.kind}:{path}", split, subset=ds.limit, subset_seed=ds.seed,
                             on_bad_row=on_bad_row, **options)
        if bad_rows is not None:
            bad_rows.extend(items.bad_rows.rows)
        items = list(items)
        if ds.categories:
            want = set(ds.categories)
            items = [ex for ex in items if ex.category in want]
    items = list(items)
    if not items:
        raise DataRowError(f"dataset {ds.kind}:{ds.path or ds.split} selected no items (check split, limit, categories)")
    seen: dict[str, str] = {}
    for ex in items:
        if ex.item_id in seen:
            raise DataRowError(f"item id {ex.item_id!r} appears twice ({seen[ex.item_id]} and {ex.source}); "
                               "result rows are keyed by item id")
        seen[ex.item_id] = ex.source
    return items
