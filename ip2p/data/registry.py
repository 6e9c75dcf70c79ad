"""One opener for every dataset kind: ``open_dataset(spec, split=..., ...)``.

A spec is ``"<kind>:<location>"`` (``official:/data/ip2p``, ``parquet:/data/hub``,
``jsonl:/data/manifest.jsonl``, ``world:train``) or a bare path whose kind is detected (a folder
with ``seeds.json`` is official, ``*.parquet`` or a folder of them is parquet, ``*.jsonl`` is a
manifest). Kinds live in a registry that other modules extend with ``register_dataset_kind``;
the test-set readers (``ip2p.data.testsets*``) are imported on demand when a kind is not found.

Every kind goes through the same steps: the reader's row checks, the CLIP filter (when asked),
the deterministic subset, then (``verify_images=True``) one decode of each kept image and mask, so that a
bad row is raised or skipped here and not in the middle of a run.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ip2p.data.filtering import ClipFilter, apply_clip_filter
from ip2p.data.rows import BadRowLog, EditDataset, check_image, check_mask, parse_subset, stable_unit
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError

log = logging.getLogger("ip2p.data")

# opener(location, *, split, bad, **options) -> iterable of EditExample (rows already field-checked)
Opener = Callable[..., Iterable[EditExample]]


@dataclass(frozen=True)
class DatasetKind:
    name: str
    open: Opener
    detect: Callable[[Path], bool] | None = None  # claims a bare path
    splits: tuple[str, ...] | None = None  # named splits it knows (None: no fixed list)
    default_split: str | None = None
    description: str = ""
    verify: bool = True  # False: images are generated in memory, nothing to verify


_KINDS: dict[str, DatasetKind] = {}
_BUILTIN_MODULES = ("ip2p.data.official", "ip2p.data.parquet", "ip2p.data.jsonl", "ip2p.data.world.reader")
# imported when a kind is unknown, so that their register_dataset_kind calls run
_PLUGIN_MODULES = ("ip2p.data.testsets",)
_loaded_builtin = False


def register_dataset_kind(name: str, open: Opener, *, detect: Callable[[Path], bool] | None = None,
                          splits: tuple[str, ...] | None = None, default_split: str | None = None,
                          description: str = "", verify: bool = True, replace: bool = False) -> DatasetKind:
    """Add a dataset kind. ``open(location, *, split, bad, **options)`` yields EditExamples and
    reports bad rows through ``bad.report(source, field, problem)``."""
    if ":" in name or not name:
        raise ValueError(f"dataset kind names cannot be empty or contain ':': {name!r}")
    if name in _KINDS and not replace:
        raise ValueError(f"dataset kind {name!r} is already registered")
    kind = DatasetKind(name, open, detect, splits, default_split, description, verify)
    _KINDS[name] = kind
    return kind


GENERIC_KINDS = ("parquet", "jsonl")  # formats any data set may use; a bare path prefers a specific kind


def _load_builtin() -> None:
    global _loaded_builtin
    if not _loaded_builtin:
        _loaded_builtin = True
        for m in _BUILTIN_MODULES:
            importlib.import_module(m)


def _load_plugins() -> None:
    for m in _PLUGIN_MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:
                raise


def dataset_kinds() -> dict[str, DatasetKind]:
    _load_builtin()
    _load_plugins()
    return dict(_KINDS)


def resolve_spec(spec: str | Path) -> tuple[DatasetKind, str]:
    """(kind, location) for a spec string or path."""
    _load_builtin()
    s = str(spec)
    head, sep, rest = s.partition(":")
    if sep and len(head) > 1:  # ("C:" drive letters are paths)
        if head not in _KINDS:
            _load_plugins()
        if head in _KINDS:
            return _KINDS[head], rest
        if not Path(s).exists():
            raise DataRowError(f"unknown dataset kind {head!r} in {s!r}; known kinds: {', '.join(sorted(dataset_kinds()))}")
    if s in _KINDS:  # a bare kind name, e.g. "world"
        return _KINDS[s], ""
    p = Path(s)
    if not p.exists():
        raise DataRowError(f"dataset {s!r} not found: no such file or folder, and no '<kind>:' prefix "
                           f"(kinds: {', '.join(sorted(dataset_kinds()))})")
    # a test set's own layout (Emu Edit's or MagicBrush's parquet shards) is more specific than the
    # generic formats that would also read its files: the specific kind wins whatever the import order
    claims = [k for k in dataset_kinds().values() if k.detect is not None and k.detect(p)]
    claims.sort(key=lambda k: k.name in GENERIC_KINDS)
    if claims:
        return claims[0], s
    raise DataRowError(f"cannot tell the dataset kind of {s!r}; write it as '<kind>:{s}' "
                       f"with a kind in {', '.join(sorted(dataset_kinds()))}")


def make_clip_filter(clip_filter: ClipFilter | Mapping[str, Any] | bool | None) -> ClipFilter | None:
    if clip_filter is None or clip_filter is False:
        return None
    if clip_filter is True:
        return ClipFilter()
    if isinstance(clip_filter, ClipFilter):
        return clip_filter
    if isinstance(clip_filter, Mapping):
        return ClipFilter(**clip_filter)
    raise TypeError(f"clip_filter must be a ClipFilter, a dict of thresholds, True or None; got {clip_filter!r}")


def open_dataset(spec: str | Path, split: str | None = None, *, subset: int | float | str | None = None,
                 subset_seed: int = 0, clip_filter: ClipFilter | Mapping[str, Any] | bool | None = None,
                 on_bad_row: str = "raise", verify_images: bool = True, **options: Any) -> EditDataset:
    """Open a dataset split as an ``EditDataset`` of EditExamples.

    - ``split``: a name the kind knows (official and world: train/val/test, default train;
      parquet: a file-name prefix or "all"; jsonl: the rows' ``split`` field or "all").
    - ``subset``: a count (``500``) or fraction (``0.1``, ``"10%"``) chosen by
      ``ip2p.data.rows.select_subset`` with ``subset_seed`` (stable when the dataset grows).
    - ``clip_filter``: True for the paper's thresholds, or a ``ClipFilter`` / dict of thresholds.
    - ``on_bad_row``: "raise" (DataRowError naming the row and field) or "skip" (logged, counted
      in ``dataset.bad_rows``).
    - ``verify_images``: decode every kept image once now, so bad images are found up front.
    - other keyword options go to the kind's reader (e.g. ``n``, ``seed``, ``categories`` for world).
    """
    kind, location = resolve_spec(spec)
    bad = BadRowLog(on_bad_row)
    if split is None and kind.splits is not None and location in kind.splits:
        split = location  # e.g. "world:test"
    if kind.splits is not None and split is not None and split not in kind.splits:
        raise DataRowError(f"dataset {str(spec)!r} ({kind.name}) has no split {split!r}; splits: {', '.join(kind.splits)}")
    try:
        rows = list(kind.open(location, split=split, bad=bad, **options))
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise DataRowError(f"dataset kind {kind.name!r} does not take option: {e}") from e
        raise
    n_read = len(rows)
    flt = make_clip_filter(clip_filter)
    if flt is not None:
        rows = apply_clip_filter(rows, flt, bad)
    n_filtered = len(rows)
    rows = _subset_and_verify(rows, subset, subset_seed, bad, verify_images and kind.verify)
    info = {"rows_read": n_read}
    if flt is not None:
        info["after_clip_filter"] = n_filtered
    if subset is not None:
        info["subset"] = subset
    ds = EditDataset(rows, name=f"{kind.name}:{location}" if location else kind.name, split=split or kind.default_split, bad_rows=bad, info=info)
    if bad.rows:
        log.warning("%s", ds.describe())
    else:
        log.info("%s", ds.describe())
    return ds


def _verified(ex: EditExample, bad: BadRowLog) -> bool:
    src = ex.source or ex.item_id
    if not check_image(ex.load_input, src, "input_image", bad):
        return False
    if ex.target_image is not None and not check_image(ex.load_target, src, "target_image", bad):
        return False
    if ex.mask is not None and not check_mask(ex.load_mask, src, "mask", bad):
        return False
    return True


def _subset_and_verify(rows: list[EditExample], subset, seed: int, bad: BadRowLog, verify: bool) -> list[EditExample]:
    subset = parse_subset(subset)
    if subset is None or isinstance(subset, float):
        if subset is not None:
            rows = [ex for ex in rows if stable_unit(seed, ex.item_id) < subset]
        return [ex for ex in rows if _verified(ex, bad)] if verify else rows
    # a count: the k smallest keys among rows whose images are good (bad ones are replaced
    # by the next key, so the count holds whenever enough good rows exist)
    order = sorted(range(len(rows)), key=lambda i: (stable_unit(seed, rows[i].item_id), rows[i].item_id))
    keep: set[int] = set()
    for i in order:
        if len(keep) >= subset:
            break
        if not verify or _verified(rows[i], bad):
            keep.add(i)
    return [ex for i, ex in enumerate(rows) if i in keep]
