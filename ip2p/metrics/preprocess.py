"""CLIP image preprocessing on tensors: the paper's square resize, open_clip's own transform, and the
published script's [-1, 1] quirk, as pure functions of ``[N, 3, H, W]`` batches in [0, 1].

- ``"paper"``: ``F.interpolate(x, size=(S, S), mode="bicubic", align_corners=False)`` (square, no
  crop, no antialias, no clamp), then ``(x - mean) / std`` with the model's mean/std (OpenAI's for
  OpenAI CLIP). This is what ``metrics/clip_similarity.py`` of the InstructPix2Pix release does.
- ``"open_clip"``: the model's own evaluation transform (resize shortest side with antialias,
  centre crop; or squash / longest-side-and-pad per its ``resize_mode``), then normalise, applied
  to tensors rather than PIL images (so without PIL's 8-bit rounding).
- ``"official-compat"``: ``x -> 2x - 1`` first, then ``"paper"``. The published
  ``compute_metrics.py`` passed [-1, 1] images to the CLIP helper, which expects [0, 1]; use this
  only to compare with the published numbers, never as a metric of record.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

PREPROCESS_MODES = ("paper", "open_clip", "official-compat")


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def paper_preprocess(x: torch.Tensor, size: tuple[int, int], mean, std) -> torch.Tensor:
    """Square bicubic resize to ``size`` (align_corners=False, no antialias), then normalise."""
    x = F.interpolate(x.float(), size=tuple(size), mode="bicubic", align_corners=False)
    return normalize(x, mean, std)


def official_compat_preprocess(x: torch.Tensor, size: tuple[int, int], mean, std) -> torch.Tensor:
    """The published script's quirk: [0, 1] images are fed as [-1, 1] (``2x - 1``) to ``paper``."""
    return paper_preprocess(2.0 * x - 1.0, size, mean, std)


def open_clip_preprocess(x: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """The model's own eval transform (per ``cfg['resize_mode']``) on a tensor batch, then normalise."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    size = cfg["size"]
    sh, sw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    interp = InterpolationMode.BILINEAR if cfg.get("interpolation") == "bilinear" else InterpolationMode.BICUBIC
    mode = cfg.get("resize_mode", "shortest")
    x = x.float()
    h, w = x.shape[-2:]
    if mode == "squash":
        x = TF.resize(x, [sh, sw], interpolation=interp, antialias=True)
    elif mode == "longest":
        scale = min(sh / h, sw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = TF.resize(x, [nh, nw], interpolation=interp, antialias=True)
        fill = cfg.get("fill_color", 0)
        fill = float(fill) / 255.0 if isinstance(fill, (int, float)) else 0.0
        top, left = (sh - nh) // 2, (sw - nw) // 2
        x = F.pad(x, (left, sw - nw - left, top, sh - nh - top), value=fill)
    elif mode == "shortest":
        if sh == sw:
            x = TF.resize(x, sh, interpolation=interp, antialias=True)  # torchvision Resize(int) semantics
        else:
            scale = max(sh / h, sw / w)
            x = TF.resize(x, [round(h * scale), round(w * scale)], interpolation=interp, antialias=True)
        x = TF.center_crop(x, [sh, sw])
    else:
        raise ValueError(f"preprocess_cfg.resize_mode: expected 'shortest', 'squash' or 'longest', got {mode!r}")
    return normalize(x, cfg["mean"], cfg["std"])


def preprocess_images(x: torch.Tensor, mode: str, cfg: dict[str, Any]) -> torch.Tensor:
    """Apply preprocessing ``mode`` (one of PREPROCESS_MODES) with the model's ``cfg``."""
    size = cfg["size"]
    size2 = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if mode == "paper":
        return paper_preprocess(x, size2, cfg["mean"], cfg["std"])
    if mode == "official-compat":
        return official_compat_preprocess(x, size2, cfg["mean"], cfg["std"])
    if mode == "open_clip":
        return open_clip_preprocess(x, cfg)
    raise ValueError(f"preprocess: expected one of {PREPROCESS_MODES}, got {mode!r}")


def describe_preprocess(mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able record of what ``mode`` does with this model (part of the metric spec)."""
    size = cfg["size"]
    size2 = [size, size] if isinstance(size, int) else [int(size[0]), int(size[1])]
    rec: dict[str, Any] = {"mode": mode, "size": size2, "mean": [float(v) for v in cfg["mean"]],
                           "std": [float(v) for v in cfg["std"]]}
    if mode in ("paper", "official-compat"):
        rec["resize"] = "F.interpolate bicubic align_corners=False, square, no crop, no antialias"
        if mode == "official-compat":
            rec["input_map"] = "2x-1 (published script quirk; for comparison with published numbers only)"
    else:
        rec["resize"] = f"{cfg.get('resize_mode', 'shortest')} {cfg.get('interpolation', 'bicubic')} antialias"
    return rec
