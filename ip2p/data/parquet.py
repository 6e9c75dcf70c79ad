"""Reader of Hub-style parquet datasets (``timbrooks/instructpix2pix-clip-filtered``).

Columns ``original_prompt`` (input caption), ``edit_prompt`` (instruction), ``edited_prompt``
(output caption), ``original_image`` and ``edited_image`` (structs ``{bytes, path}``; a null
``bytes`` falls back to ``path`` relative to the parquet file). Other scalar columns are carried
in ``metadata``. The location is one ``.parquet`` file or a folder searched recursively (sorted);
``split`` = "all" (default) or a file-name prefix such as "train" (``train-00000-of-00010.parquet``).

Texts are read up front; images (null ones included) are checked when first decoded, from their
row group (a few groups are cached per process; random access over a very large file reads whole
row groups, so prefer files with small row groups for training). Item ids are
``"{file stem}/{row}"``, stable when files are added.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

from ip2p.data.registry import register_dataset_kind
from ip2p.data.rows import BadRowLog, require_text
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError, ImageReadError
from ip2p.util.io import decode_image, decode_image_plain, load_image, load_image_plain

TEXT_COLUMNS = {"original_prompt": "input_caption", "edit_prompt": "instruction", "edited_prompt": "output_caption"}
IMAGE_COLUMNS = {"original_image": "input_image", "edited_image": "target_image"}


def parquet_files(location: str, split: str | None) -> list[Path]:
    p = Path(location)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(p.rglob("*.parquet"))
    else:
        raise DataRowError(f"parquet dataset {location!r}: no such file or folder")
    if split not in (None, "all"):
        files = [f for f in files if f.name.startswith(split)]
        if not files:
            raise DataRowError(f"parquet dataset {location!r}: no file name starts with split {split!r}")
    if not files:
        raise DataRowError(f"parquet dataset {location!r}: no .parquet files found")
    return files


class _RowGroupImages:
    """Decodes one image cell on demand, caching the last few row groups of its file."""

    def __init__(self, path: Path, cache_groups: int = 4, plain: bool = False):
        import pyarrow.parquet as pq

        self.path = path
        self.plain = plain  # read as the benchmarks' authors (ip2p.util.io.decode_image_plain)
        self._pq = pq
        self._file = None
        self.cache_groups = cache_groups
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        meta = pq.ParquetFile(path).metadata
        self.group_starts = []
        start = 0
        for g in range(meta.num_row_groups):
            self.group_starts.append(start)
            start += meta.row_group(g).num_rows

    def __getstate__(self):  # picklable for DataLoader workers: drop the open file and cache
        return {"path": self.path, "cache_groups": self.cache_groups, "group_starts": self.group_starts}

    def __setstate__(self, state):
        import pyarrow.parquet as pq

        self.__dict__.update(state)
        self._pq, self._file, self._cache, self._lock = pq, None, OrderedDict(), threading.Lock()

    def cell(self, row: int, column: str):
        import bisect

        g = bisect.bisect_right(self.group_starts, row) - 1
        with self._lock:
            key = (g, column)
            if key not in self._cache:
                if self._file is None:
                    self._file = self._pq.ParquetFile(self.path)
                self._cache[key] = self._file.read_row_group(g, columns=[column]).column(column).to_pylist()
                while len(self._cache) > self.cache_groups:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            return self._cache[key][row - self.group_starts[g]]

    def load(self, row: int, column: str, field: str):
        where = f"{self.path} row {row} field {column!r} ({field})"
        value = self.cell(row, column)
        if value is None:
            raise ImageReadError(f"{where}: image is null")
        if isinstance(value, dict):
            data, rel = value.get("bytes"), value.get("path")
        elif isinstance(value, (bytes, bytearray)):
            data, rel = value, None
        else:
            raise ImageReadError(f"{where}: expected a struct {{bytes, path}}, got {type(value).__name__}")
        plain = self.plain and field != "mask"  # masks are no scorer's image: always our reader
        if data:
            return (decode_image_plain if plain else decode_image)(bytes(data), where=where)
        if rel:
            return (load_image_plain if plain else load_image)(self.path.parent / rel, what=where)
        raise ImageReadError(f"{where}: neither bytes nor path is set")


class _CellLoader:
    def __init__(self, images: _RowGroupImages, row: int, column: str, field: str):
        self.images, self.row, self.column, self.field = images, row, column, field

    def __call__(self):
        return self.images.load(self.row, self.column, self.field)


def read_parquet(location: str, *, split: str | None, bad: BadRowLog, cache_groups: int = 4) -> Iterator[EditExample]:
    import pyarrow.parquet as pq

    root = Path(location)
    for path in parquet_files(location, split):
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        missing = [c for c in (*TEXT_COLUMNS, *IMAGE_COLUMNS) if c not in names]
        if missing:
            bad.report(str(path), missing[0], f"column missing from the file (all {pf.metadata.num_rows} rows skipped); "
                       f"expected columns {', '.join((*TEXT_COLUMNS, *IMAGE_COLUMNS))}")
            continue
        scalar_cols = [c for c in pf.schema_arrow.names if c not in IMAGE_COLUMNS]
        table = pf.read(columns=scalar_cols).to_pylist()
        images = _RowGroupImages(path, cache_groups)
        stem = str(path.relative_to(root).with_suffix("")) if path != root else path.stem
        for row, rec in enumerate(table):
            src = f"{path} row {row}"
            texts = {}
            for col, key in TEXT_COLUMNS.items():
                texts[key] = require_text(rec, col, src, bad, allow_empty=(key != "instruction"))
                if texts[key] is None:
                    break
            if len(texts) < 3 or any(v is None for v in texts.values()):
                continue
            meta = {k: v for k, v in rec.items() if k not in TEXT_COLUMNS and isinstance(v, (int, float, str, bool))}
            meta["row"] = row
            yield EditExample(
                item_id=f"{stem}/{row}",
                instruction=texts["instruction"],
                input_image=_CellLoader(images, row, "original_image", "input_image"),
                target_image=_CellLoader(images, row, "edited_image", "target_image"),
                input_caption=texts["input_caption"],
                output_caption=texts["output_caption"],
                metadata=meta,
                source=src,
            )


def _detect(p: Path) -> bool:
    return (p.is_file() and p.suffix == ".parquet") or (p.is_dir() and any(p.rglob("*.parquet")))


register_dataset_kind("parquet", read_parquet, detect=_detect, default_split="all",
                      description="Hub-style parquet: original_prompt, original_image, edit_prompt, edited_prompt, edited_image")
