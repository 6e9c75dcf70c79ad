"""Metrics of the published editing benchmarks that the core suite lacks, computed as each
benchmark's own scorer computes them, with the direction of each column.

PIE-Bench (PnPInversion ``evaluation/evaluate.py`` + ``matrics_calculator.py``); ``mask`` True =
the edited region (the benchmark's decoded mask, border included); ``keep = 1 - mask``:

=====================  ===========================================================================  =========
column                 definition (as run)                                                          better
=====================  ===========================================================================  =========
pie_psnr_unedit        PSNR(input*keep, edited*keep), data range 1, over the WHOLE image (the        higher
                       edited region is zero in both, and counts in the mean); NaN if keep is empty
pie_mse_unedit         mean((edited*keep - input*keep)^2) over the whole image                      lower
pie_ssim_unedit        SSIM(input*keep, edited*keep), torchmetrics defaults (Gaussian 11, 1.5)       higher
pie_lpips_unedit       LPIPS(input*keep, edited*keep), inputs mapped to [-1, 1]; the scorer uses      lower
                       torchmetrics' ``net_type='squeeze'``
pie_clip_whole         CLIPScore = 100 * max(cos(E_img(edited), E_txt(output prompt)), 0)           higher
pie_clip_edited        the same on the 8-bit edited image times the mask (outside set to 0)         higher
structure_distance     see :mod:`ip2p.metrics.dino` (DINO-ViT key self-similarity MSE)             lower
=====================  ===========================================================================  =========

The PIE prompts' ``[ ]`` markers are removed by the reader (as the scorer does) before any text
metric. Text metrics of an item with no output caption are NaN (counted by the harness), never 0.

DINO (MagicBrush / Emu Edit; :mod:`ip2p.metrics.dino`): ``dino_image`` = cos of DINO CLS of the
input and the edited image (Emu Edit's DINO), ``target_dino`` = the same against the ground-truth
output (MagicBrush's DINO). MagicBrush's CLIP-I and CLIP-T are the core suite's
``target_clip_image`` and ``clip_sim_1`` with that suite's CLIP and preprocessing set to the
benchmark's (ViT-B/32, resize-shorter-side + centre crop); see README "Published benchmarks".
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ip2p.metrics import pixel
from ip2p.metrics.checks import check_images, check_mask, check_same_shape
from ip2p.metrics.dino import DIRECTION as DINO_DIRECTION
from ip2p.metrics.dino import DinoViT, dino_similarity, structure_distance
from ip2p.metrics.groups import MetricColumn, register_metric_group

PIE_COLUMNS = ("pie_psnr_unedit", "pie_mse_unedit", "pie_ssim_unedit", "pie_lpips_unedit", "pie_clip_whole", "pie_clip_edited")
TEXT_COLUMNS = ("pie_clip_whole", "pie_clip_edited")

DIRECTION = {
    "pie_psnr_unedit": "higher", "pie_mse_unedit": "lower", "pie_ssim_unedit": "higher", "pie_lpips_unedit": "lower",
    "pie_clip_whole": "higher", "pie_clip_edited": "higher", **DINO_DIRECTION,
}
# default tolerances (ip2p.metrics.groups): 0.01 of a similarity, 0.2 dB, 0.005 of SSIM and LPIPS,
# one point of PIE-Bench's CLIP score (a cosine x 100)
TOLERANCE = {"dino_image": 0.01, "target_dino": 0.01, "structure_distance": 0.0005,
             "pie_psnr_unedit": 0.2, "pie_mse_unedit": 0.0005, "pie_ssim_unedit": 0.005,
             "pie_lpips_unedit": 0.005, "pie_clip_whole": 1.0, "pie_clip_edited": 1.0}
for _group, _cols, _about in (
        ("pie", PIE_COLUMNS, "PIE-Bench background metrics and CLIP scores (uses the clip and lpips settings)"),
        ("dino", ("dino_image", "target_dino"), "DINO similarity to the input and to the target (MagicBrush, Emu Edit)"),
        ("structure", ("structure_distance",), "PIE-Bench structure distance")):
    register_metric_group(_group, columns=[MetricColumn(c, DIRECTION[c], TOLERANCE[c], "benchmark metric") for c in _cols],
                          description=_about, replace=True)


def _keep(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor):
    check_images(reference, "reference")
    check_images(image, "image", n=reference.shape[0])
    check_same_shape(reference, image, "reference", "image")
    n, _, h, w = reference.shape
    m = check_mask(mask, "mask", n=n, height=h, width=w).to(reference.device)
    keep = (~m)[:, None].float()
    empty = keep.flatten(1).sum(1) == 0
    return reference.float() * keep, image.float().to(reference.device) * keep, empty


def _nan_where(values: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    values = values.float().cpu()
    return torch.where(empty.cpu(), torch.full_like(values, float("nan")), values)


def pie_unedited(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, lpips=None) -> dict[str, torch.Tensor]:
    """PIE-Bench's background metrics per item (``[N]`` each): psnr, mse, ssim and, given an
    :class:`ip2p.metrics.LPIPS`, lpips, of the zero-filled unedited region (table above)."""
    a, b, empty = _keep(reference, image, mask)
    out = {
        "pie_psnr_unedit": _nan_where(pixel.psnr(a, b), empty),
        "pie_mse_unedit": _nan_where(pixel.l2(a, b), empty),
        "pie_ssim_unedit": _nan_where(pixel.ssim(a, b), empty),
    }
    if lpips is not None:
        out["pie_lpips_unedit"] = _nan_where(lpips(a, b), empty)
    return out


def clip_score(clip, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """``100 * max(cos(E_img(image), E_txt(text)), 0)`` per item (torchmetrics' CLIPScore), NaN where
    the text is empty; ``clip`` is an :class:`ip2p.metrics.ClipSimilarity` (its preprocessing)."""
    check_images(images, "images", n=len(texts))
    texts = list(texts)
    have = [i for i, t in enumerate(texts) if t.strip()]
    out = torch.full((len(texts),), float("nan"))
    if have:
        img = clip.embed_images(images[have], "images")
        txt = clip.embed_texts([texts[i] for i in have], "texts")
        out[have] = (100.0 * F.cosine_similarity(img, txt, dim=-1)).clamp_min(0.0).float().cpu()
    return out


def masked_8bit(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``uint8(image * mask)`` as the scorer builds the edited-region image (mask True = kept)."""
    n, _, h, w = images.shape
    m = check_mask(mask, "mask", n=n, height=h, width=w).to(images.device)
    u8 = (images.clamp(0, 1) * 255).round()
    return (u8 * m[:, None].float()).floor() / 255.0


class BenchmarkMetrics:
    """The benchmark columns for a batch of edits, with provenance.

    ``dino``: a :class:`DinoViT` for ``dino_image`` / ``target_dino`` (with ``dino_options``:
    resize, crop); ``structure``: a :class:`DinoViT` for ``structure_distance`` (options layer,
    size, max_size, pixel_scale, antialias); ``pie=True`` adds PIE-Bench's background columns
    (needs masks) and, given ``clip``, its CLIP scores; ``lpips`` adds ``pie_lpips_unedit``.
    """

    def __init__(self, *, dino: DinoViT | None = None, dino_options: dict | None = None,
                 structure: DinoViT | None = None, structure_options: dict | None = None,
                 pie: bool = False, clip=None, lpips=None):
        self.dino, self.dino_options = dino, dict(dino_options or {})
        self.structure, self.structure_options = structure, dict(structure_options or {})
        self.pie, self.clip, self.lpips = pie, clip, lpips

    def __call__(self, inputs: torch.Tensor, outputs: torch.Tensor, text_1: Sequence[str], *,
                 targets: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.dino is not None:
            out["dino_image"] = dino_similarity(inputs, outputs, self.dino, **self.dino_options)
            if targets is not None:
                out["target_dino"] = dino_similarity(targets, outputs, self.dino, **self.dino_options)
        if self.structure is not None:
            out["structure_distance"] = structure_distance(inputs, outputs, self.structure, **self.structure_options)
        if self.pie:
            if masks is not None:
                out.update(pie_unedited(inputs, outputs, masks, self.lpips))
            if self.clip is not None:
                out["pie_clip_whole"] = clip_score(self.clip, outputs, text_1)
                if masks is not None:
                    region = clip_score(self.clip, masked_8bit(outputs, masks), text_1)
                    empty = masks.flatten(1).sum(1) == 0
                    out["pie_clip_edited"] = _nan_where(region, empty)
        return {k: v.float().cpu() for k, v in out.items()}

    def spec(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"direction": DIRECTION}
        if self.dino is not None:
            rec["dino"] = {**self.dino.identity(), "preprocess": "PIL Resize(resize, bicubic), CenterCrop(crop), ImageNet norm",
                           "feature": "CLS of the last layer after LayerNorm", **{"resize": 256, "crop": 224, **self.dino_options}}
        if self.structure is not None:
            rec["structure"] = {**self.structure.identity(), "feature": "keys of block `layer`, heads concatenated, CLS included",
                                "preprocess": "x*pixel_scale, torchvision Resize(size, max_size, bilinear), ImageNet norm",
                                **{"layer": -1, "size": 224, "max_size": 480, "pixel_scale": 255.0, "antialias": True,
                                   **self.structure_options}}
        if self.pie:
            rec["pie"] = {"mask": "True = edited; keep = 1 - mask; images multiplied by keep, metric over the whole image",
                          "lpips": self.lpips.spec() if self.lpips is not None else None,
                          "clip": self.clip.spec() if self.clip is not None else None,
                          "clip_score": "100 * max(cos, 0); edited part on uint8(image * mask)"}
        return rec
