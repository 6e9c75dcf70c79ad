"""Small real fixtures for the harness's tests and smoke runs: a random-weights CLIP in the
metrics' folder format and a seconds-long sweep spec (tiny random InstructPix2Pix, world items).

Random weights make the numbers meaningless but every code path real: the same loaders, the same
sampler, the same metric functions a user runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def random_clip_folder(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random open_clip model (open_clip's own tokenizer) in the folder format of
    ``ip2p.metrics.clip_models``; returns the folder."""
    import open_clip
    import torch

    from ip2p.metrics.clip_models import save_clip_folder

    folder = Path(folder)
    if (folder / "open_clip_config.json").exists():
        return folder
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    save_clip_folder(folder, model, TINY_CLIP_CFG,
                     {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                      "interpolation": "bicubic", "resize_mode": "squash", "image_size": 32})
    return folder


def tiny_spec(clip_folder: str | Path | None = None, *, items: int = 3, batch_size: int = 4,
              name: str = "tiny") -> dict[str, Any]:
    """A 12-unit sweep: 3 world test items x (sT in {1, 7.5}) x (sI in {1, 1.5}), 2 steps, CPU."""
    metrics: dict[str, Any] = {"compute": ["pixel", "target", "masked"]}
    if clip_folder is not None:
        metrics = {"compute": ["clip", "pixel", "target", "masked"],
                   "clip": {"model": str(clip_folder), "pretrained": None, "preprocess": "paper"}}
    return {
        "name": name,
        "dataset": {"kind": "world", "split": "test", "limit": items},
        "methods": [{"name": "instructpix2pix", "model": "tiny", "knobs": {"num_inference_steps": 2},
                     "grid": {"guidance_scale": [1.0, 7.5], "image_guidance_scale": [1.0, 1.5]}}],
        "metrics": metrics,
        "seeds": [0],
        "batch_size": batch_size,
        "device": "cpu",
    }


def assert_same_rows(a, b) -> None:
    """Row for row: same units, same image files (content hashes), same values, bit for bit."""
    import pandas as pd

    a = a.sort_values("unit_key").reset_index(drop=True)
    b = b.sort_values("unit_key").reset_index(drop=True)
    assert list(a["unit_key"]) == list(b["unit_key"])
    assert sorted(a.columns) == sorted(b.columns)
    pd.testing.assert_frame_equal(a[sorted(a.columns)], b[sorted(b.columns)], check_exact=True)
