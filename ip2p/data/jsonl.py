"""Reader of a JSONL manifest of image paths, one JSON object per line:

    {"input_image": "a/0.png", "edited_image": "a/1.png", "instruction": "make it red",
     "input_caption": "...", "output_caption": "...", "category": "attribute",
     "mask": "a/mask.png", "id": "a-0", "split": "train", ...}

Required: ``input_image`` and ``instruction`` (non-empty), and the edited image (``edited_image``,
or ``target_image`` / ``target``) unless ``require_target=False``. Optional: captions,
``category``, ``mask`` (an image; pixels > 0.5 are True), ``id`` / ``item_id`` (default
``"line{n}"``, n counted from 1), ``split``. Relative paths are resolved against the manifest's
folder; other fields go to ``metadata``. ``split`` = "all" (default) or a value of the rows'
``split`` field.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Iterator

import torch

from ip2p.data.registry import register_dataset_kind
from ip2p.data.rows import BadRowLog, require_text
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError
from ip2p.util.io import load_image

TARGET_KEYS = ("edited_image", "target_image", "target")
KNOWN = {"input_image", *TARGET_KEYS, "instruction", "input_caption", "output_caption", "category", "mask", "id", "item_id"}


def load_mask(path: Path, *, what: str) -> torch.Tensor:
    """A mask image as bool ``[H, W]`` (True where the edit should change pixels)."""
    return load_image(path, what=what).mean(0) > 0.5


def read_jsonl(location: str, *, split: str | None, bad: BadRowLog, require_target: bool = True) -> Iterator[EditExample]:
    manifest = Path(location)
    if not manifest.is_file():
        raise DataRowError(f"JSONL manifest {location!r}: file not found")
    lines = manifest.read_text(encoding="utf-8").splitlines()
    want_split = None if split in (None, "all") else split
    if want_split is not None and not any('"split"' in line for line in lines):
        raise DataRowError(f"{manifest}: split {split!r} asked for, but no row has a 'split' field; use split='all'")
    seen_ids: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        src = f"{manifest}:{lineno}"
        row = _parse_row(line, src, bad)
        if row is None or (want_split is not None and row.get("split") != want_split):
            continue
        instruction = require_text(row, "instruction", src, bad)
        if instruction is None:
            continue
        captions = _captions(row, src, bad)
        if captions is None:
            continue
        found = _image_paths(row, src, manifest.parent, bad, require_target)
        if found is None:
            continue
        paths, target_key = found
        item_id = str(row.get("id", row.get("item_id", f"line{lineno}")))
        if item_id in seen_ids:
            bad.report(src, "id", f"duplicate id {item_id!r} (first on line {seen_ids[item_id]})")
            continue
        seen_ids[item_id] = lineno
        yield _example(row, item_id, instruction, captions, paths, target_key, src)


def _parse_row(line: str, src: str, bad: BadRowLog) -> dict | None:
    """The line's JSON object, or None (reported) when it is not one."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        bad.report(src, "(line)", f"not valid JSON: {e}")
        return None
    if not isinstance(row, dict):
        bad.report(src, "(line)", f"expected a JSON object, got {type(row).__name__}")
        return None
    return row


def _captions(row: dict, src: str, bad: BadRowLog) -> dict[str, str] | None:
    """``input_caption`` and ``output_caption`` (missing or null: ""), or None (reported) if one is not text."""
    captions = {}
    for key in ("input_caption", "output_caption"):
        v = row.get(key, "")
        if v is None:
            v = ""
        if not isinstance(v, str):
            bad.report(src, key, f"expected text, got {type(v).__name__}")
            return None
        captions[key] = v
    return captions


def _image_paths(row: dict, src: str, base: Path, bad: BadRowLog,
                 require_target: bool) -> tuple[dict[str, Path], str | None] | None:
    """The row's image files by role (``input_image``, ``target_image`` if any, ``mask`` if any),
    relative paths resolved against ``base``, and the field the target came from; None (reported)
    when one is missing or not a file."""
    key_of = {"input_image": "input_image"}
    target_key = next((k for k in TARGET_KEYS if row.get(k)), None)
    if target_key is not None:
        key_of["target_image"] = target_key
    elif require_target:
        bad.report(src, "edited_image", "missing field (the edited image is needed for training; "
                   "pass require_target=False for test sets without one)")
        return None
    if row.get("mask"):
        key_of["mask"] = "mask"
    paths: dict[str, Path] = {}
    for role, key in key_of.items():
        rel = require_text(row, key, src, bad)
        if rel is None:
            return None
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if not p.is_file():
            bad.report(src, key, f"file not found: {p}")
            return None
        paths[role] = p
    return paths, target_key


def _example(row: dict, item_id: str, instruction: str, captions: dict[str, str], paths: dict[str, Path],
             target_key: str | None, src: str) -> EditExample:
    """The row as an ``EditExample`` whose images load when asked for."""
    return EditExample(
        item_id=item_id,
        instruction=instruction,
        input_image=partial(load_image, paths["input_image"], what=f"input_image of {src}"),
        target_image=(partial(load_image, paths["target_image"], what=f"{target_key} of {src}")
                      if "target_image" in paths else None),
        mask=partial(load_mask, paths["mask"], what=f"mask of {src}") if "mask" in paths else None,
        input_caption=captions["input_caption"],
        output_caption=captions["output_caption"],
        category=row.get("category"),
        metadata={k: v for k, v in row.items() if k not in KNOWN},
        source=src,
    )


def _detect(p: Path) -> bool:
    return p.is_file() and p.suffix == ".jsonl"


register_dataset_kind("jsonl", read_jsonl, detect=_detect, default_split="all",
                      description="JSONL manifest of image paths (input_image, edited_image, instruction, ...)")
