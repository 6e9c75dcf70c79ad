"""MagicBrush (Zhang et al. 2023) as a benchmark: its test set's files as given (no split), the
single-turn, per-turn and final-turn tables of its official scorer, and its output layout
``<id>/<id>_1.png``, ``<id>/<id>_inde_<N>.png``, ``<id>/<id>_iter_<N>.png`` (what its
``evaluation/image_eval.py --generated_path`` reads). Iterative turns are chained by
``bench.benchmarks.turns``; the reader is ``ip2p.data.magicbrush_release``."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ip2p.data.types import EditExample

from bench.benchmarks import Benchmark, per_category, register_benchmark


def _turn_views(df: pd.DataFrame, single_turn: str) -> dict[str, pd.DataFrame]:
    parts = df["item_id"].str.split("/")
    img_id = parts.str[0]
    mode = parts.map(lambda p: "single" if len(p) == 2 else {"inde": "independent", "iter": "iterative"}.get(p[1], p[1]))
    turn = parts.map(lambda p: int(p[-1]))
    views = {"per_turn": df}
    single = df[(mode == "single") | ((mode == "independent") & (single_turn == "all"))].copy()
    single["category"] = "single_turn" if single_turn == "all" else "turn_1"
    views["single_turn"] = single
    # final turn per session: the last iterative turn, else turn 1
    key = df[["method", "knobs", "seed"]].astype(str).agg("|".join, axis=1) + "|" + img_id
    chained = df[(mode == "iterative") | (mode == "single")].assign(_key=key, _turn=turn)
    last = chained.loc[chained.groupby("_key")["_turn"].idxmax()] if len(chained) else chained
    final = last.drop(columns=["_key", "_turn"]).copy()
    final["category"] = "multi_turn_final"
    views["multi_turn_final"] = final
    return views


def views(df: pd.DataFrame, items: Sequence[EditExample], benchmark_spec) -> dict[str, pd.DataFrame]:
    """The turn views when the items are the release's turns (ids ``<id>/<N>``, ``<id>/<mode>/<N>``)."""
    if df["item_id"].str.contains("/").all() and any("turn_mode" in ex.metadata for ex in items):
        return _turn_views(df, benchmark_spec.single_turn)
    return per_category(df, items, benchmark_spec)


def official_name(ex: EditExample) -> str | None:
    meta = ex.metadata
    return f"{meta['img_id']}/{meta['official_name']}" if "official_name" in meta else None

def authors_target_pixels(edited: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MagicBrush's ``evaluation/image_eval.py`` L1 and L2 when the edit and the ground truth differ
    in size: the generated image resized to the ground truth's size with PIL's default filter
    (bicubic; stretched, no crop), both as ToTensor, then L1Loss / MSELoss (means over all values)."""
    from PIL import Image

    from ip2p.util.io import tensor_to_pil

    h, w = int(target.shape[-2]), int(target.shape[-1])
    gen = tensor_to_pil(edited).resize((w, h), Image.Resampling.BICUBIC)
    g = torch.from_numpy(np.asarray(gen, dtype=np.float32) / 255.0).permute(2, 0, 1)
    t = target.float()
    return {"target_l1": float((g - t).abs().mean()), "target_l2": float(((g - t) ** 2).mean())}


def authors_rescore(edited: torch.Tensor, target: torch.Tensor | None, met: dict) -> None:
    """The target pixel columns as the authors' script computes them, where the sizes differ (in place)."""
    if target is not None and "target_l1" in met and tuple(target.shape[-2:]) != tuple(edited.shape[-2:]):
        met.update(authors_target_pixels(edited, target))


MAGICBRUSH = register_benchmark(Benchmark(
    "magicbrush", published=True, authors_rescore=authors_rescore, views=views, official_name=official_name,
    default_metrics=("clip", "pixel", "target", "dino"),
    description="MagicBrush test set: single-turn, per-turn and final-turn tables, official file layout"))
