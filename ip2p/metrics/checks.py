"""Input contracts of the metrics: image batches in [0, 1], caption lists, edit masks.

Every metric function checks its inputs here first, so a wrong range, rank or length is refused
with a ValueError that names the argument, what was expected, what came and how to fix it.
"""
from __future__ import annotations

from typing import Sequence

import torch

# Slack on the [0, 1] range: resampling and 8-bit round trips land a hair outside it.
RANGE_TOLERANCE = 1e-3


def check_images(x: torch.Tensor, name: str, *, n: int | None = None) -> torch.Tensor:
    """Check ``x`` is a float image batch ``[N, 3, H, W]`` with finite values in [0, 1].

    Returns ``x`` unchanged. ``n`` (when given) is the batch size it must have.
    Raises ValueError naming ``name`` otherwise.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a float tensor [N, 3, H, W] in [0, 1], got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a float tensor in [0, 1], got dtype {x.dtype}; "
            f"convert 8-bit images with x.float() / 255"
        )
    if x.ndim != 4 or x.shape[1] != 3:
        hint = " (a single image? add a batch dimension with x[None])" if x.ndim == 3 else ""
        raise ValueError(f"{name}: expected shape [N, 3, H, W], got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (N = 0)")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: batch size {x.shape[0]} does not match the other inputs' {n}")
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = "; it looks like [-1, 1]: map it with (x + 1) / 2" if lo < -0.05 else ""
        if hi > 2:
            hint = "; it looks like [0, 255]: divide by 255"
        raise ValueError(f"{name}: values must lie in [0, 1], got min {lo:.4g}, max {hi:.4g}{hint}")
    return x


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b}: shape {tuple(b.shape)} differs from {name_a} {tuple(a.shape)}; "
            f"pixel metrics compare images of the same size (resize one of them first)"
        )


def check_texts(texts: Sequence[str], name: str, *, n: int | None = None) -> list[str]:
    """Check ``texts`` is a list of strings (of length ``n`` when given); return it as a list."""
    if isinstance(texts, str):
        raise ValueError(f"{name}: expected a list of strings, one per image, got a single string; wrap it: [{name}]")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"{name}: expected a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}]: expected a string, got {type(t).__name__}")
    if n is not None and len(texts) != n:
        raise ValueError(f"{name}: {len(texts)} strings for {n} images; give one caption per image")
    return texts


def check_mask(mask: torch.Tensor, name: str, *, n: int, height: int, width: int) -> torch.Tensor:
    """Check an edit mask and return it as bool ``[N, H, W]`` (True = edited region).

    Accepts bool ``[N, H, W]``, ``[N, 1, H, W]`` or one ``[H, W]`` mask shared by the batch.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a bool tensor [N, H, W] or [H, W], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"{name}: expected dtype torch.bool (True = edited region), got {mask.dtype}; "
            f"threshold it, e.g. mask > 0.5"
        )
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = mask.expand(n, *mask.shape)
    if mask.ndim != 3 or tuple(mask.shape) != (n, height, width):
        raise ValueError(f"{name}: expected shape ({n}, {height}, {width}) or ({height}, {width}), got {tuple(mask.shape)}")
    return mask
