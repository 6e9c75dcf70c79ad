"""Readers of the small world: editing examples and captioned images, per split, deterministic.

Every item comes from its own scene seed. Seeds of the three splits live in disjoint ranges
(``scene_seed``), so train, validation and test never share a scene. Item ``i`` of a split depends
only on ``(split, seed, i)``: asking for more items extends a list without changing its start.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ip2p.data.types import EditExample
from ip2p.data.world.edits import CATEGORIES, make_edit
from ip2p.data.world.scenes import N_CAPTION_PHRASINGS, Scene, caption, random_scene, render

SPLITS = ("train", "val", "test")
_SPLIT_BASE = {"train": 0, "val": 1 << 40, "test": 2 << 40}
_MAX_ITEMS = 1 << 24  # items per (split, seed) stream
_MAX_SEED = 1 << 15
_STREAMS = {"edits": 0, "captions": 1}
# The share of editing inputs drawn at night (every split's default; a training run may draw more of
# these rarer scenes with ``night_p``: only the night flags change, every other draw stays the same).
NIGHT_P = 0.1


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown world split {split!r}; expected one of {SPLITS}")


def scene_seed(split: str, index: int, seed: int = 0, stream: str = "edits") -> int:
    """The scene seed of item ``index``: split ranges never overlap."""
    _check_split(split)
    if not 0 <= index < _MAX_ITEMS:
        raise ValueError(f"world item index {index} out of range [0, {_MAX_ITEMS})")
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"world seed {seed} out of range [0, {_MAX_SEED})")
    return _SPLIT_BASE[split] + ((_STREAMS[stream] * _MAX_SEED + seed) * _MAX_ITEMS) + index


def split_of_seed(s: int) -> str:
    """Which split a scene seed belongs to (inverse of ``scene_seed``'s split ranges)."""
    for name in reversed(SPLITS):
        if s >= _SPLIT_BASE[name]:
            return name
    raise ValueError(f"negative scene seed {s}")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 ``[64, 64, 3]`` -> float ``[3, 64, 64]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def scene_to_dict(scene: Scene) -> dict:
    return {
        "background": scene.background,
        "style": scene.style,
        "night": scene.night,
        "shapes": [dict(kind=s.kind, colour=s.colour, size=s.size, row=s.row, col=s.col) for s in scene.shapes],
    }


def check_night_p(night_p) -> float:
    """``night_p`` as a float, or a ValueError naming it when it is not a probability."""
    try:
        p = float(night_p)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"night_p must be a probability in [0, 1], got {night_p!r}")
    return p


def make_example(split: str, index: int, seed: int = 0, category: str | None = None,
                 night_p: float = NIGHT_P) -> EditExample:
    """Item ``index`` of ``split``; its category cycles through CATEGORIES unless given. ``night_p``:
    the chance that the input scene is drawn at night (the world's default for every split)."""
    night_p = check_night_p(night_p)
    s = scene_seed(split, index, seed)
    rng = np.random.default_rng(s)
    if category is None:
        category = CATEGORIES[index % len(CATEGORIES)]
    if category not in CATEGORIES:
        raise ValueError(f"unknown world category {category!r} for item {split}-{index:06d}; known: {CATEGORIES}")
    for _ in range(1000):
        scene = random_scene(rng, night_p=night_p)
        edit = make_edit(scene, category, rng, allow_held_out=split != "train")
        if edit is not None:
            break
    else:  # pragma: no cover - every category applies to a large share of scenes
        raise RuntimeError(f"no applicable {category} edit found for item {split}-{index:06d}")
    phrasing = int(rng.integers(N_CAPTION_PHRASINGS))
    a, b = render(scene), render(edit.target)
    mask = (a != b).any(axis=2)
    return EditExample(
        item_id=f"{split}-{index:06d}",
        instruction=edit.instruction,
        input_image=to_tensor(a),
        input_caption=caption(scene, phrasing),
        output_caption=caption(edit.target, phrasing),
        target_image=to_tensor(b),
        mask=torch.from_numpy(mask),
        category=category,
        metadata={
            "scene_seed": s,
            "split": split,
            "seed": seed,
            "template": edit.template,
            "held_out_phrasing": edit.held_out,
            "caption_phrasing": phrasing,
            **({} if night_p == NIGHT_P else {"night_p": night_p}),
            "input_scene": scene_to_dict(scene),
            "target_scene": scene_to_dict(edit.target),
        },
        source=f"world:{split}/seed={seed}/{index}",
    )


def world_examples(
    split: str, n: int | None = None, seed: int = 0, categories: Iterable[str] | None = None,
    night_p: float = NIGHT_P,
) -> Iterator[EditExample]:
    """Editing examples of ``split`` (``n`` of them, or endless when None), deterministic.

    With ``categories`` given, items cycle through those categories only (in the given order);
    item ids and scene seeds stay those of the underlying stream. ``night_p``: see ``make_example``.
    """
    _check_split(split)
    night_p = check_night_p(night_p)
    cats = list(categories) if categories is not None else None
    if cats is not None:
        bad = [c for c in cats if c not in CATEGORIES]
        if bad or not cats:
            raise ValueError(f"unknown world categories {bad or cats}; known: {CATEGORIES}")
    i = 0
    while n is None or i < n:
        cat = None if cats is None else cats[i % len(cats)]
        yield make_example(split, i, seed, cat, night_p)
        i += 1


def caption_scene(split: str, index: int, seed: int = 0) -> Scene:
    """The scene of caption item ``index``: includes night scenes and puddles, as edits produce."""
    rng = np.random.default_rng(scene_seed(split, index, seed, stream="captions"))
    return random_scene(rng, night_p=0.15, puddle_p=0.15)


def world_captions(split: str, n: int, seed: int = 0) -> list[tuple[torch.Tensor, str]]:
    """``n`` (image ``[3, 64, 64]`` in [0, 1], caption) pairs for text-to-image and CLIP training."""
    _check_split(split)
    out = []
    for i in range(n):
        scene = caption_scene(split, i, seed)
        phrasing = int(np.random.default_rng(scene_seed(split, i, seed, "captions") + 7).integers(N_CAPTION_PHRASINGS))
        out.append((to_tensor(render(scene)), caption(scene, phrasing)))
    return out


__all__ = ["world_examples", "world_captions", "make_example", "scene_seed", "split_of_seed", "SPLITS", "CATEGORIES"]
