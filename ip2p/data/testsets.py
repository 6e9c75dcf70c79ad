"""Readers of public editing test sets, as dataset kinds of ``ip2p.data.open_dataset``.

Each reader takes the files as their publishers ship them and yields ``EditExample`` rows; a row
missing a field is reported through the bad-row policy (``DataRowError`` naming file, row and field,
or skipped and counted). The official layout, Hub-style parquet and JSONL manifests have their
test splits through their own kinds (``official``, ``parquet``, ``jsonl``); this module adds:

- ``emu_edit``: Emu Edit test set parquet (``facebook/emu_edit_test_set``): columns ``instruction``,
  ``image`` ({bytes, path}), ``task`` (-> category), ``input_caption``, ``output_caption``, ``idx``
  with ``split`` (the row's own column, else the split asked for, else the file-name prefix) keyed
  as the authors' loader keys a row: item id ``"{split}/{task}/{idx}"`` (``idx`` alone repeats
  across tasks and splits); optional ``hash``. ``split`` selects files by name prefix
  (``validation-*.parquet``, ``test-*.parquet``) or, for a single file, rows by the ``split`` column.
- ``magicbrush``: the released test set (zip or folder; ``ip2p.data.magicbrush_release``, per-turn
  items, options ``turn_mode`` and ``captions``), or the MagicBrush parquet (``osunlp/MagicBrush``): ``img_id``, ``turn_index``,
  ``source_img``, ``target_img``, ``instruction``, optional ``mask_img`` (white = edited region)
  and captions (``input_caption``/``output_caption``). Item id ``"{img_id}/{turn_index}"``.
- ``pie_bench``: PIE-Bench folder with ``mapping_file.json`` and ``annotation_images/``. Entries
  ``{id: {image_path, original_prompt, editing_prompt, editing_instruction, editing_type_id, mask}}``;
  prompts lose their ``[`` ``]`` edit markers; the category is the editing type's name; the mask is
  decoded by ``decode_pie_mask`` (convention below).
- ``editworld``: EditWorld layout (``<root>/<category>/<group>/img_txt.json`` as written by the
  EditWorld generation code): entries ``{key: {instruction (the release spells it "instuction"),
  original_img_path, target_img_path?, target_caption? (or "target_cation"/"output_caption"),
  original_caption?, category?}}``; an entry without an output caption (the generation code writes
  none) is kept with ``metadata["missing_text"] = "output_caption"`` and its text metrics are NaN;
  the category is the entry's field or the first folder under the root; ``metadata["branch"]`` is "text-to-image" or "video" for the paper's categories.

PIE-Bench mask convention (checked against the benchmark's own ``mask_decode``): the list is flat,
``[start_0, length_0, start_1, length_1, ...]``; starts are 0-based offsets into the row-major
(C order) raster of ``512 x 512``; a run is clipped at the raster's end; pixels covered by a run
are the edited region (True). The benchmark's evaluation then also marks the one-pixel image
border as edited "to avoid annotation errors in boundary"; ``border=True`` (the default, option
``pie_border``) does the same so background metrics match the benchmark's.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ip2p.data.registry import register_dataset_kind
from ip2p.data.rows import BadRowLog, require_text
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError
from ip2p.util.io import image_loader, load_image_plain, read_json
from ip2p.util.paths import UnsafePathError, safe_output_path

# ---- shared parquet helpers ------------------------------------------------------------------


def _open_parquet(location: str, split: str | None, required: Sequence[str], bad: BadRowLog, kind: str,
                  scoring: str = "authors"):
    """Yield (path, rows as dicts without image columns, image loader, column names) per file."""
    import pyarrow.parquet as pq

    from ip2p.data.parquet import _RowGroupImages, parquet_files

    p = Path(location)
    single = p.is_file()
    files = parquet_files(location, None if single else split)
    for path in files:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
        missing = [c for c in required if c not in names]
        if missing:
            bad.report(str(path), missing[0], f"column missing from the {kind} file (its {pf.metadata.num_rows} rows "
                       f"skipped); expected columns {', '.join(required)}")
            continue
        yield path, pf, names, _RowGroupImages(path, plain=image_loader(scoring) is load_image_plain)


def _image_loader(images, row: int, column: str, field: str):
    from ip2p.data.parquet import _CellLoader

    return _CellLoader(images, row, column, field)


def _null_cells(pf, column: str) -> list[bool]:
    return pf.read(columns=[column]).column(column).is_null().to_pylist()


def _scalars(pf, names: Sequence[str], image_columns: Sequence[str]) -> list[dict]:
    return pf.read(columns=[c for c in names if c not in image_columns]).to_pylist()


def _plain_meta(rec: dict, skip: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in skip and isinstance(v, (int, float, str, bool))}


# ---- Emu Edit --------------------------------------------------------------------------------

EMU_REQUIRED = ("instruction", "image", "task", "input_caption", "output_caption", "idx")


def _emu_split(rec: dict, split: str | None, path: Path) -> str:
    """The split a row belongs to: its ``split`` column, else the one asked for, else the file's prefix."""
    if isinstance(rec.get("split"), str) and rec["split"]:
        return rec["split"]
    if split not in (None, "all"):
        return str(split)
    return path.name.split("-")[0] if "-" in path.name else path.stem


def read_emu_edit(location: str, *, split: str | None, bad: BadRowLog, scoring: str = "authors") -> Iterator[EditExample]:
    seen: dict[str, str] = {}
    single = Path(location).is_file()
    for path, pf, names, images in _open_parquet(location, split, EMU_REQUIRED, bad, "Emu Edit", scoring):
        nulls = _null_cells(pf, "image")
        for row, rec in enumerate(_scalars(pf, names, ("image",))):
            src = f"{path} row {row}"
            if single and split not in (None, "all") and "split" in rec and rec["split"] != split:
                continue
            instruction = require_text(rec, "instruction", src, bad)
            if instruction is None:
                continue
            caps = [require_text(rec, k, src, bad, allow_empty=True) for k in ("input_caption", "output_caption")]
            if None in caps:
                continue
            task = require_text(rec, "task", src, bad)
            if task is None:
                continue
            if rec.get("idx") is None:
                bad.report(src, "idx", "missing value")
                continue
            if nulls[row]:
                bad.report(src, "image", "image is null")
                continue
            row_split = _emu_split(rec, split, Path(path))
            item_id = f"{row_split}/{task}/{rec['idx']}"
            if item_id in seen:
                bad.report(src, "idx", f"duplicate (split, task, idx) {item_id!r} (first at {seen[item_id]})")
                continue
            seen[item_id] = src
            yield EditExample(
                item_id=item_id,
                instruction=instruction,
                input_image=_image_loader(images, row, "image", "input_image"),
                input_caption=caps[0],
                output_caption=caps[1],
                category=task,
                metadata={**_plain_meta(rec, ("instruction", "input_caption", "output_caption")), "split": row_split},
                source=src,
            )


# ---- MagicBrush ------------------------------------------------------------------------------

MAGICBRUSH_REQUIRED = ("img_id", "turn_index", "source_img", "instruction", "target_img")
_CAPTION_KEYS = {"input_caption": ("input_caption", "source_caption", "global_description_source"),
                 "output_caption": ("output_caption", "target_caption", "global_description_target")}


def _white_mask(load) -> torch.Tensor:
    """MagicBrush's mask image: the white region is the edited one (True)."""
    x = load()  # [3, H, W] in [0, 1]
    return x.mean(0) > 0.5


def read_magicbrush(location: str, *, split: str | None, bad: BadRowLog, scoring: str = "authors",
                    **release_options) -> Iterator[EditExample]:
    from ip2p.data.magicbrush_release import is_release, read_magicbrush_release

    if is_release(Path(location)):  # the test set as released (zip or folder): per-turn items
        yield from read_magicbrush_release(location, split=split, bad=bad, scoring=scoring, **release_options)
        return
    if release_options:
        raise DataRowError(f"MagicBrush {location}: options {sorted(release_options)} apply to the released test set "
                           "(edit_sessions.json layout), not to the Hub parquet")
    image_cols = ("source_img", "target_img", "mask_img")
    for path, pf, names, images in _open_parquet(location, split, MAGICBRUSH_REQUIRED, bad, "MagicBrush", scoring):
        nulls = {c: _null_cells(pf, c) for c in image_cols if c in names}
        for row, rec in enumerate(_scalars(pf, names, image_cols)):
            src = f"{path} row {row}"
            instruction = require_text(rec, "instruction", src, bad)
            if instruction is None:
                continue
            if rec.get("img_id") in (None, "") or rec.get("turn_index") is None:
                bad.report(src, "img_id" if rec.get("img_id") in (None, "") else "turn_index", "missing value")
                continue
            null_col = next((c for c in ("source_img", "target_img") if nulls[c][row]), None)
            if null_col:
                bad.report(src, null_col, "image is null")
                continue
            caps = {}
            for field, keys in _CAPTION_KEYS.items():
                caps[field] = next((rec[k] for k in keys if isinstance(rec.get(k), str)), "")
            mask = None
            if "mask_img" in names and not nulls["mask_img"][row]:
                mask = partial(_white_mask, _image_loader(images, row, "mask_img", "mask"))
            yield EditExample(
                item_id=f"{rec['img_id']}/{rec['turn_index']}",
                instruction=instruction,
                input_image=_image_loader(images, row, "source_img", "input_image"),
                target_image=_image_loader(images, row, "target_img", "target_image"),
                mask=mask,
                input_caption=caps["input_caption"],
                output_caption=caps["output_caption"],
                metadata=_plain_meta(rec, ("instruction",)),
                source=src,
            )


# ---- PIE-Bench -------------------------------------------------------------------------------

PIE_EDIT_TYPES = {
    "0": "random", "1": "change_object", "2": "add_object", "3": "delete_object",
    "4": "change_attribute_content", "5": "change_attribute_pose", "6": "change_attribute_color",
    "7": "change_attribute_material", "8": "change_background", "9": "change_style",
}
PIE_REQUIRED = ("image_path", "original_prompt", "editing_prompt", "editing_instruction", "editing_type_id", "mask")


def decode_pie_mask(rle: Sequence[int], shape: tuple[int, int] = (512, 512), *, border: bool = True) -> torch.Tensor:
    """PIE-Bench run-length mask -> bool ``[H, W]`` (True = edited). See the module docstring."""
    if len(rle) % 2:
        raise ValueError(f"run-length list has odd length {len(rle)}; expected [start, length] pairs")
    h, w = shape
    flat = np.zeros(h * w, dtype=bool)
    arr = np.asarray(rle, dtype=np.int64).reshape(-1, 2)
    if (arr < 0).any():
        raise ValueError("run-length list has a negative start or length")
    if len(arr) and arr[:, 0].max() >= h * w:
        raise ValueError(f"a run starts at {int(arr[:, 0].max())}, beyond the {h}x{w} raster")
    for start, length in arr:
        flat[start:min(start + length, h * w)] = True
    mask = flat.reshape(h, w)
    if border:
        mask[0, :] = mask[-1, :] = True
        mask[:, 0] = mask[:, -1] = True
    return torch.from_numpy(mask)


def encode_pie_mask(mask: torch.Tensor | np.ndarray) -> list[int]:
    """Inverse of ``decode_pie_mask(border=False)``: runs of True in row-major order."""
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    out: list[int] = []
    for s, e in zip(starts, ends):
        out += [int(s), int(e - s)]
    return out


def _strip_markers(text: str, scoring: str = "authors") -> str:
    """A prompt without its ``[ ]`` edit markers: only the brackets deleted, as evaluate.py does
    (``scoring: authors``); ``ours`` also collapses the whitespace they leave."""
    text = text.replace("[", "").replace("]", "")
    return text if scoring == "authors" else " ".join(text.split())


def read_pie_bench(location: str, *, split: str | None, bad: BadRowLog, pie_border: bool = True,
                   mask_shape: tuple[int, int] = (512, 512), scoring: str = "authors") -> Iterator[EditExample]:
    load = image_loader(scoring)
    p = Path(location)
    mapping = p if p.is_file() else p / "mapping_file.json"
    root = mapping.parent
    data = read_json(mapping, DataRowError, missing=f"PIE-Bench {location!r}: mapping_file.json not found")
    if not isinstance(data, dict):
        raise DataRowError(f"{mapping}: expected a mapping {{id: entry}}, got {type(data).__name__}")
    for key, entry in data.items():
        src = f"{mapping} entry {key!r}"
        if not isinstance(entry, dict):
            bad.report(src, "(entry)", f"expected a mapping, got {type(entry).__name__}")
            continue
        missing = [f for f in PIE_REQUIRED if f not in entry or entry[f] is None]
        if missing:
            bad.report(src, missing[0], "missing field")
            continue
        texts = {}
        for f in ("original_prompt", "editing_prompt", "editing_instruction", "image_path"):
            texts[f] = require_text(entry, f, src, bad, allow_empty=(f != "editing_instruction" and f != "image_path"))
            if texts[f] is None:
                break
        if len(texts) < 4 or None in texts.values():
            continue
        try:  # the benchmark's output name is built from it: nothing may climb out of the folder
            image_path = safe_output_path(root / "annotation_images", texts["image_path"], what="image_path")
        except UnsafePathError as e:
            bad.report(src, "image_path", str(e))
            continue
        if not image_path.is_file():
            bad.report(src, "image_path", f"file not found: {image_path}")
            continue
        rle = entry["mask"]
        try:
            if not isinstance(rle, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in rle):
                raise ValueError("expected a flat list of integers")
            mask = decode_pie_mask(rle, tuple(mask_shape), border=pie_border)
        except ValueError as e:
            bad.report(src, "mask", str(e))
            continue
        type_id = str(entry["editing_type_id"])
        yield EditExample(
            item_id=str(key),
            instruction=texts["editing_instruction"],
            input_image=partial(load, image_path, what=f"image of {src}"),
            input_caption=_strip_markers(texts["original_prompt"], scoring),
            output_caption=_strip_markers(texts["editing_prompt"], scoring),
            mask=mask,
            category=PIE_EDIT_TYPES.get(type_id, f"type_{type_id}"),
            # the border evaluate.py marks edited stays the image's outermost rows and columns at
            # any size the mask is resized to (bench.rows._fit_mask), with scoring: authors
            metadata={"editing_type_id": type_id, "image_path": texts["image_path"],
                      "mask_border": bool(pie_border) and scoring == "authors",
                      "blended_word": entry.get("blended_word", ""),
                      "original_prompt": texts["original_prompt"], "editing_prompt": texts["editing_prompt"]},
            source=src,
        )


# ---- EditWorld -------------------------------------------------------------------------------

EDITWORLD_BRANCH = {
    "long_term": "text-to-image", "physical_trans": "text-to-image", "implicit_logic": "text-to-image",
    "story_type": "text-to-image", "real_to_virtual": "text-to-image",
    "spatial_trans": "video", "exaggeration": "video",
}
_EW_INSTRUCTION = ("instruction", "instuction")
_EW_OUTPUT_CAPTION = ("target_caption", "target_cation", "output_caption")
_EW_INPUT_CAPTION = ("original_caption", "input_caption")


def _norm_category(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _resolve_image(value: str, folder: Path) -> Path | None:
    p = Path(value)
    for cand in (p, folder / p, folder / p.name):
        if cand.is_file():
            return cand
    return None


def _first(entry: dict, keys: Sequence[str]) -> tuple[str | None, Any]:
    for k in keys:
        if k in entry and entry[k] is not None:
            return k, entry[k]
    return None, None


def _required_text(entry: dict, keys: Sequence[str], field: str, src: str, bad: BadRowLog) -> str | None:
    """The text under the first present spelling in ``keys``; None (reported as ``field``) if
    every spelling is missing or the text is empty."""
    key, _ = _first(entry, keys)
    if key is None:
        others = ", ".join(repr(k) for k in keys if k != field)
        bad.report(src, field, f"missing field (also looked for {others})")
        return None
    return require_text(entry, key, src, bad)


def read_editworld(location: str, *, split: str | None, bad: BadRowLog, scoring: str = "authors") -> Iterator[EditExample]:
    load = image_loader(scoring)
    root = Path(location)
    files = [root] if root.is_file() else sorted(root.rglob("img_txt.json"))
    if not files:
        raise DataRowError(f"EditWorld {location!r}: no img_txt.json found under it")
    base = root.parent if root.is_file() else root
    for jpath in files:
        try:
            data = json.loads(jpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            bad.report(str(jpath), "(file)", f"not valid UTF-8 JSON: {e}")
            continue
        entries = data.items() if isinstance(data, dict) else enumerate(data)
        rel_dir = jpath.parent.relative_to(base)
        for key, entry in entries:
            example = _editworld_example(entry, key, jpath, rel_dir, load, bad)
            if example is not None:
                yield example


def _editworld_example(entry: Any, key, jpath: Path, rel_dir: Path, load, bad: BadRowLog) -> EditExample | None:
    """Entry ``key`` of the file ``jpath`` (in ``rel_dir`` under the root) as an example, or None
    when it is reported as bad."""
    src = f"{jpath} entry {key!r}"
    if not isinstance(entry, dict):
        bad.report(src, "(entry)", f"expected a mapping, got {type(entry).__name__}")
        return None
    instruction = _required_text(entry, _EW_INSTRUCTION, "instruction", src, bad)
    if instruction is None:
        return None
    # EditWorld's own writer stores no output caption: the item is kept, its text metrics
    # are then missing (NaN, counted and named in the run's tables), never zero
    cap_key, out_cap = _first(entry, _EW_OUTPUT_CAPTION)
    if cap_key is not None and not isinstance(out_cap, str):
        bad.report(src, cap_key, f"expected text, got {type(out_cap).__name__}")
        return None
    missing_text = [] if (isinstance(out_cap, str) and out_cap.strip()) else ["output_caption"]
    images = _editworld_images(entry, jpath.parent, src, load, bad)
    if images is None:
        return None
    input_image, target = images
    _, in_cap = _first(entry, _EW_INPUT_CAPTION)
    category = entry.get("category") or (rel_dir.parts[0] if rel_dir.parts else None)
    category = _norm_category(str(category)) if category else None
    branch = entry.get("branch") or EDITWORLD_BRANCH.get(category or "", None)
    meta = {"branch": branch} if branch else {}
    if missing_text:
        meta["missing_text"] = ",".join(missing_text)
    return EditExample(
        item_id=f"{rel_dir.as_posix()}/{key}" if rel_dir.parts else str(key),
        instruction=instruction,
        input_image=input_image,
        target_image=target,
        input_caption=in_cap if isinstance(in_cap, str) else "",
        output_caption=out_cap if not missing_text else "",
        category=category,
        metadata=meta,
        source=src,
    )


def _editworld_images(entry: dict, folder: Path, src: str, load, bad: BadRowLog):
    """(input image loader, target image loader or None) of an entry, paths looked up as given, under
    ``folder`` and by name in ``folder``; None (reported) when the input is missing or a file is not found."""
    img_val = entry.get("original_img_path")
    if not isinstance(img_val, str) or not img_val:
        bad.report(src, "original_img_path", "missing field")
        return None
    img = _resolve_image(img_val, folder)
    if img is None:
        bad.report(src, "original_img_path", f"file not found: {img_val} (also looked in {folder})")
        return None
    target = None
    if isinstance(entry.get("target_img_path"), str):
        tp = _resolve_image(entry["target_img_path"], folder)
        if tp is None:
            bad.report(src, "target_img_path", f"file not found: {entry['target_img_path']}")
            return None
        target = partial(load, tp, what=f"target image of {src}")
    return partial(load, img, what=f"input image of {src}"), target


def _has_parquet_columns(p: Path, columns: Sequence[str]) -> bool:
    import pyarrow.parquet as pq

    files = [p] if p.is_file() else sorted(p.rglob("*.parquet"))[:1] if p.is_dir() else []
    if not files or files[0].suffix != ".parquet":
        return False
    try:
        names = set(pq.ParquetFile(files[0]).schema_arrow.names)
    except Exception:
        return False
    return all(c in names for c in columns)


register_dataset_kind("emu_edit", read_emu_edit, detect=lambda p: _has_parquet_columns(p, ("task", "image", "idx")),
                      description="Emu Edit test set parquet: instruction, image, task, input_caption, output_caption, idx")
def _detect_magicbrush(p: Path) -> bool:
    from ip2p.data.magicbrush_release import is_release

    return is_release(p) or _has_parquet_columns(p, ("source_img", "target_img"))


register_dataset_kind("magicbrush", read_magicbrush, detect=_detect_magicbrush,
                      description="MagicBrush: the released test set (zip or folder with test/edit_sessions.json; "
                                  "options turn_mode, captions) or the Hub parquet (img_id, turn_index, source_img, ...)")
register_dataset_kind("pie_bench", read_pie_bench, detect=lambda p: (p / "mapping_file.json").is_file() if p.is_dir() else p.name == "mapping_file.json",
                      description="PIE-Bench: mapping_file.json + annotation_images/ (run-length masks)")
register_dataset_kind("editworld", read_editworld, detect=lambda p: p.is_dir() and any(p.rglob("img_txt.json")),
                      description="EditWorld: <category>/<group>/img_txt.json with original/target image paths")
