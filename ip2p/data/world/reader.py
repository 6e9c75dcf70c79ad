"""Adapter from the small world's generator to the dataset registry: ``world:<split>``.

``open_dataset("world:train", n=5000, seed=0, categories="add,remove")`` yields the examples of
``ip2p.data.world.examples.world_examples(split, n=n, seed=seed, categories=categories)`` (64x64, with
exact targets and masks) after the usual row checks. ``n`` defaults to 10,000 for train and
1,000 for val and test (the generator itself is endless). ``night_p`` (default the world's 0.1) is
the share of input scenes drawn at night: a training run may draw more of these rarer scenes.
``world`` alone takes the split from the ``split`` argument (default train).

Texts and metadata are kept; images are regenerated on demand from (split, index, seed,
category) -- about 1 ms an item -- so a large training set costs no memory.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from ip2p.data.registry import register_dataset_kind
from ip2p.data.rows import BadRowLog
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError

WORLD_SPLITS = ("train", "val", "test")
DEFAULT_N = {"train": 10_000, "val": 1_000, "test": 1_000}


class _WorldImage:
    """Picklable lazy image of one world item: regenerates the item, returns one of its tensors."""

    def __init__(self, split: str, index: int, seed: int, category: str | None, attr: str, night_p: float):
        self.split, self.index, self.seed, self.category, self.attr = split, index, seed, category, attr
        self.night_p = night_p

    def __call__(self):
        from ip2p.data.world.examples import make_example

        return getattr(make_example(self.split, self.index, self.seed, self.category, self.night_p), self.attr)


def read_world(location: str, *, split: str | None, bad: BadRowLog, n: int | None = None, seed: int = 0,
               categories: str | Sequence[str] | None = None, night_p: float | None = None,
               lazy: bool = True) -> Iterator[EditExample]:
    if location and split is not None and split != location:
        raise DataRowError(f"dataset 'world:{location}' names split {location!r} but split={split!r} was also given")
    name = location or split or "train"
    if name not in WORLD_SPLITS:
        raise DataRowError(f"world dataset has no split {name!r}; splits: {', '.join(WORLD_SPLITS)}")
    try:
        from ip2p.data.world import examples as world_dataset
    except ModuleNotFoundError as e:
        raise DataRowError(f"the small world's generator is not available (ip2p.data.world.examples): {e}") from e
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    n = DEFAULT_N[name] if n is None else int(n)
    try:
        night_p = world_dataset.NIGHT_P if night_p is None else world_dataset.check_night_p(night_p)
    except ValueError as e:
        raise DataRowError(f"world:{name}: option {e}") from e
    cats = list(categories) if categories else None
    lazy = lazy and hasattr(world_dataset, "make_example")
    for i, ex in enumerate(world_dataset.world_examples(name, n=n, seed=int(seed), categories=cats,
                                                                 night_p=night_p)):
        src = ex.source or f"world:{name} item {ex.item_id}"
        if not isinstance(ex.instruction, str) or not ex.instruction.strip():
            bad.report(src, "instruction", "empty text")
            continue
        if ex.target_image is None:
            bad.report(src, "target_image", "missing")
            continue
        ex.source = src
        if lazy:  # same item, regenerated on demand (category as world_examples chose it)
            cat = None if cats is None else cats[i % len(cats)]
            ex.input_image = _WorldImage(name, i, int(seed), cat, "input_image", night_p)
            ex.target_image = _WorldImage(name, i, int(seed), cat, "target_image", night_p)
            ex.mask = _WorldImage(name, i, int(seed), cat, "mask", night_p)
        yield ex


register_dataset_kind("world", read_world, splits=WORLD_SPLITS, default_split="train", verify=False,
                      description="the small world's generated edits (64x64, exact targets and masks)")
