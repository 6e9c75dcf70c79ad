"""Reader of the official InstructPix2Pix dataset layout (REFERENCE.md, "Data generation").

    root/seeds.json              sorted [[dir_name, [seed, ...]], ...]
    root/{dir}/prompt.json       {"input": caption, "edit": instruction, "output": caption}
                                 ("caption" is read for "input", as the official text generator writes it)
    root/{dir}/{seed}_0.jpg      input image;  {seed}_1.jpg: edited image
    root/{dir}/metadata.jsonl    one row per seed: seed, p2p_threshold, cfg_scale,
                                 clip_sim_0, clip_sim_1, clip_sim_dir, clip_sim_image

Splits follow the official code: 0.9 / 0.05 / 0.05 of the prompt folders in ``seeds.json`` order
(train = first 90%, val = next 5%, test = last 5%, boundaries floored). One EditExample per
(folder, seed), item id ``"{dir}/{seed}"``, ``metadata["prompt_id"] = dir`` for the CLIP filter.
"""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Iterator

from ip2p.data.registry import register_dataset_kind
from ip2p.data.rows import BadRowLog, require_text
from ip2p.data.types import EditExample
from ip2p.util.io import load_image, read_json

SPLIT_FRACTIONS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0), "all": (0.0, 1.0)}
METADATA_FIELDS = ("p2p_threshold", "cfg_scale", "clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")


def split_range(n: int, split: str) -> tuple[int, int]:
    """[start, stop) of ``split`` among ``n`` prompt folders."""
    lo, hi = SPLIT_FRACTIONS[split]
    return math.floor(lo * n), math.floor(hi * n) if hi < 1.0 else n


def read_seeds(root: Path) -> list[tuple[str, list[int]]]:
    from ip2p.errors import DataRowError

    path = root / "seeds.json"
    data = read_json(path, DataRowError, missing=f"{path}: not found; an official-layout dataset needs seeds.json at its root")
    out = []
    for i, entry in enumerate(data):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list)):
            raise DataRowError(f"{path} entry {i}: expected [dir_name, [seed, ...]], got {entry!r}")
        out.append((entry[0], [int(s) for s in entry[1]]))
    return out


def _read_metadata(path: Path, bad: BadRowLog) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    if not path.is_file():
        return rows
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[int(row["seed"])] = row
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            bad.report(f"{path}:{lineno}", "seed", f"unreadable metadata row ({type(e).__name__}: {e})")
    return rows


def read_official(location: str, *, split: str | None, bad: BadRowLog) -> Iterator[EditExample]:
    root = Path(location)
    seeds = read_seeds(root)
    start, stop = split_range(len(seeds), split or "train")
    for dir_name, dir_seeds in seeds[start:stop]:
        folder = root / dir_name
        prompt_path = folder / "prompt.json"
        if not prompt_path.is_file():
            bad.report(str(prompt_path), "prompt.json", f"file not found ({len(dir_seeds)} seed(s) of this prompt skipped)")
            continue
        try:
            prompt = json.loads(prompt_path.read_text())
        except json.JSONDecodeError as e:
            bad.report(str(prompt_path), "prompt.json", f"not valid JSON: {e}")
            continue
        if "input" not in prompt and "caption" in prompt:  # the official text generator's name for it
            prompt = {**prompt, "input": prompt["caption"]}
        texts = {}
        for key in ("input", "edit", "output"):
            texts[key] = require_text(prompt, key, str(prompt_path), bad, allow_empty=(key != "edit"))
            if texts[key] is None:
                break
        if any(v is None for v in texts.values()) or len(texts) < 3:
            continue
        meta_rows = _read_metadata(folder / "metadata.jsonl", bad)
        for seed in dir_seeds:
            src = f"{folder} (seed {seed})"
            paths = {"input_image": folder / f"{seed}_0.jpg", "target_image": folder / f"{seed}_1.jpg"}
            missing = [(f, p) for f, p in paths.items() if not p.is_file()]
            if missing:
                f, p = missing[0]
                bad.report(src, f, f"file not found: {p}")
                continue
            meta = {"prompt_id": dir_name, "seed": seed}
            meta.update({k: v for k, v in meta_rows.get(seed, {}).items() if k != "seed"})
            yield EditExample(
                item_id=f"{dir_name}/{seed}",
                instruction=texts["edit"],
                input_image=partial(load_image, paths["input_image"], what=f"input_image of {src}"),
                target_image=partial(load_image, paths["target_image"], what=f"target_image of {src}"),
                input_caption=texts["input"],
                output_caption=texts["output"],
                metadata=meta,
                source=src,
            )


def _detect(p: Path) -> bool:
    return p.is_dir() and (p / "seeds.json").is_file()


register_dataset_kind("official", read_official, detect=_detect, splits=tuple(SPLIT_FRACTIONS), default_split="train",
                      description="official InstructPix2Pix layout (seeds.json, prompt.json, {seed}_0/1.jpg, metadata.jsonl)")
