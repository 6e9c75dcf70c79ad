"""The items of a sweep: a spec's ``dataset`` section opened through ``ip2p.data.open_dataset``,
and their images as the sweep reads them (a bounded cache; unreadable items skipped or refused).

Each dataset kind opens as its benchmark record says (``bench.benchmarks``): ``limit`` keeps the
first N items of the small world's split (its items are generated in order) and, for files, a
deterministic subset of N that stays stable when the test set grows.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch

from ip2p.data.types import EditExample
from ip2p.errors import DataRowError, ImageReadError

from bench.spec import DatasetSpec

log = logging.getLogger("ip2p.bench")


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


class ItemImages:
    """Images of recent items (input, target, mask; loaded lazily from the readers), a few
    hundred items at most. A row whose image cannot be read raises ``DataRowError`` naming the
    item and the field. ``images(i)`` is item i's input image."""

    def __init__(self, items, capacity: int = 256):
        self.items, self.capacity = items, capacity
        self._d: OrderedDict[int, tuple] = OrderedDict()

    def entry(self, index: int) -> tuple:
        if index not in self._d:
            ex = self.items[index]
            loaded = []
            for field_name, load in (("input_image", ex.load_input), ("target_image", ex.load_target),
                                     ("mask", ex.load_mask)):
                try:
                    loaded.append(load())
                except (ImageReadError, DataRowError, ValueError, OSError) as e:
                    raise DataRowError(f"{ex.source or ex.item_id}: field {field_name!r}: {e}") from e
            self._d[index] = tuple(loaded)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
        self._d.move_to_end(index)
        return self._d[index]

    def __call__(self, index: int) -> torch.Tensor:
        return self.entry(index)[0]

    def target(self, index: int) -> torch.Tensor | None:
        return self.entry(index)[1]

    def mask(self, index: int) -> torch.Tensor | None:
        return self.entry(index)[2]


def drop_unreadable_items(batch, images: ItemImages, on_bad_row: str, skipped: set, stats: dict):
    """The batch without units whose item's images cannot be read now (``on_bad_row="skip"``,
    each such item logged once and counted in ``stats["bad_rows"]``); under "raise" the
    ``DataRowError`` naming item and field."""
    keep = []
    for u in batch:
        if u.item_index in skipped:
            continue
        try:
            images.entry(u.item_index)
        except DataRowError as e:
            if on_bad_row != "skip":
                raise DataRowError(f"{e} (pass --on-bad-row skip to skip such rows)") from e
            skipped.add(u.item_index)
            stats["bad_rows"].append(str(e))
            log.warning("skipping bad row: %s", e)
            continue
        keep.append(u)
    return keep
