"""The harness's entry point to metrics: one call per batch of edits gives every metric column per
item, and ``spec()`` records what each column was computed with (DESIGN invariant 2).

Columns (float32 ``[N]`` each, on the CPU):

==========================  ======================================================  ============
column                      value                                                    needs
==========================  ======================================================  ============
clip_sim_0                  cos(I(input), T(input caption))                          clip, captions
clip_sim_1                  cos(I(edited), T(output caption))                        clip, captions
clip_sim_direction          cos(I(edited) - I(input), T(output) - T(input caption)) clip, captions
clip_sim_image              cos(I(input), I(edited))                                 clip
lpips                       LPIPS(input, edited)                                     lpips
l1, l2, psnr, ssim          input vs edited (l2 = mean squared error)               --
target_l1                   L1(target, edited)                                       targets
target_l2                   mean squared error (target, edited) (MagicBrush's L2)    targets
target_lpips                LPIPS(target, edited)                                    targets, lpips
target_clip_image           cos(I(target), I(edited))                                targets, clip
masked_l1_outside           L1 over pixels outside the edit mask                     masks
masked_psnr_outside         PSNR over pixels outside the edit mask                   masks
masked_ssim_outside         SSIM map averaged outside the edit mask                  masks
masked_lpips_outside        LPIPS map averaged outside the edit mask                 masks, lpips
edit_success                1 = inside the mask near the target, outside kept        success, targets, masks
edit_inside_closed          share of the input-to-target distance closed in the mask success, targets, masks
edit_outside_l1             L1 to the input outside the edit mask                    success, targets, masks
==========================  ======================================================  ============

The ``edit_*`` columns (``ip2p.metrics.success``, the world's exact edit success) are computed
only by a suite built with ``success=True`` (the spec's ``success`` group), so the metric spec of
suites without it is unchanged.

A caption-based column of an item whose caption is empty (a test set entry without an output
caption, e.g. EditWorld's) is NaN, never a similarity to the empty string: ``clip_sim_0`` needs the
input caption, ``clip_sim_1`` the output caption, ``clip_sim_direction`` both. The harness counts
and names such missing values (``missing_metrics`` in each result row).

Each column also declares, in its group's registration (``ip2p.metrics.groups``; all of them in
``COLUMNS``), which direction is better and the smallest change
that counts (its tolerance, in the column's own units); the regression gate (``bench.regress``)
reads both from there. Columns against the input (``l1``, ``psnr``, ``clip_sim_image``, ...)
measure how much of the input an edit keeps, so "better" means closer to the input, the paper's
image-consistency axis; ``clip_sim_0`` depends on the input alone and has no direction.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import torch

from ip2p.metrics import pixel
from ip2p.metrics.checks import check_images
from ip2p.metrics.clip_similarity import ClipSimilarity
from ip2p.metrics.groups import COLUMNS, MetricColumn, register_metric_group  # noqa: F401  (COLUMNS, MetricColumn: re-exported)
from ip2p.metrics.lpips_metric import LPIPS
from ip2p.metrics.success import SPEC as SUCCESS_SPEC
from ip2p.metrics.success import SUCCESS_COLUMNS, edit_success
from ip2p.util.hashing import hash_bytes



CLIP_COLUMNS = ("clip_sim_0", "clip_sim_1", "clip_sim_direction", "clip_sim_image")
PIXEL_COLUMNS = ("l1", "l2", "psnr", "ssim")
TARGET_COLUMNS = ("target_l1", "target_l2", "target_lpips", "target_clip_image")
MASK_COLUMNS = ("masked_l1_outside", "masked_psnr_outside", "masked_ssim_outside", "masked_lpips_outside")


# Each built-in group with its columns' directions and tolerances (ip2p.metrics.groups). Tolerances:
# 0.01 of a cosine similarity; half a grey level (0.002 of the [0, 1] range) of a mean absolute
# error; 0.2 dB of PSNR; 0.005 of SSIM and of LPIPS.
register_metric_group("clip", columns=[
    ("clip_sim_0", None, 0.0, "cosine"),
    ("clip_sim_1", "higher", 0.01, "cosine"),
    ("clip_sim_direction", "higher", 0.01, "cosine"),
    ("clip_sim_image", "higher", 0.01, "cosine"),
], description="CLIP similarities (sim_0/1/direction/image)", replace=True)
register_metric_group("lpips", columns=[("lpips", "lower", 0.005, "LPIPS")],
                      description="LPIPS against the input", replace=True)
register_metric_group("pixel", columns=[
    ("l1", "lower", 0.002, "[0,1] range"),
    ("l2", "lower", 0.0005, "[0,1] range squared"),
    ("psnr", "higher", 0.2, "dB"),
    ("ssim", "higher", 0.005, "SSIM"),
], description="l1, l2, psnr, ssim against the input", replace=True)
register_metric_group("target", columns=[
    ("target_l1", "lower", 0.002, "[0,1] range"),
    ("target_l2", "lower", 0.0005, "[0,1] range squared"),
    ("target_lpips", "lower", 0.005, "LPIPS"),
    ("target_clip_image", "higher", 0.01, "cosine"),
], description="against the target image, when the data has one", replace=True)
register_metric_group("masked", columns=[
    ("masked_l1_outside", "lower", 0.002, "[0,1] range"),
    ("masked_psnr_outside", "higher", 0.2, "dB"),
    ("masked_ssim_outside", "higher", 0.005, "SSIM"),
    ("masked_lpips_outside", "lower", 0.005, "LPIPS"),
], description="pixel and lpips outside the edit mask, when the data has one", replace=True)
register_metric_group("success", columns=[
    ("edit_success", "higher", 0.02, "share of items"),
    ("edit_inside_closed", "higher", 0.01, "share of the edit"),
    ("edit_outside_l1", "lower", 0.002, "[0,1] range"),
], description="the world's exact edit success (ip2p.metrics.success)", replace=True)
import ip2p.metrics.benchmark_metrics  # noqa: E402,F401  (registers the published benchmarks' groups)


def _judge_columns() -> dict[str, MetricColumn]:
    """The judge rubrics' columns (``ip2p.metrics.judge``): every score is better higher; tolerance
    a tenth of a point on the rubric's scale."""
    from ip2p.metrics.judge.rubrics import RUBRICS, load_rubric

    out = {}
    for name in RUBRICS:
        lo, hi = load_rubric(name)["range"]
        for c in load_rubric(name)["columns"]:
            out[f"{name}_{c}"] = MetricColumn(f"{name}_{c}", "higher", 0.1, f"judge score {lo}..{hi}")
    return out


# computed by the harness's scorer (bench.scoring) with the spec's metrics.judge section
register_metric_group("judge", columns=list(_judge_columns().values()),
                      description="vision-language judge rubrics (ip2p.metrics.judge)", replace=True)

_PIXEL_SPEC = {
    "data_range": 1.0,
    "l1": "mean |edited - reference| over C,H,W",
    "l2": "mean (edited - reference)^2 over C,H,W",
    "psnr": "10 log10(1 / l2), torchmetrics",
    "ssim": "torchmetrics gaussian 11, sigma 1.5, k1 0.01, k2 0.03, reflect pad, mean of map, float64",
}
_MASK_SPEC = {
    "mask": "True = edited region; metrics over pixels outside it, normalised by that area",
    "composite": "edited region of the edited image replaced by the reference before comparing",
    "ssim": "torchmetrics full SSIM map (float64) averaged outside the mask",
    "lpips": "lpips spatial map averaged outside the mask",
    "empty_outside": "NaN",
}


CAPTION_NEEDS = {"clip_sim_0": ("input",), "clip_sim_1": ("output",), "clip_sim_direction": ("input", "output")}


def _blank_missing_captions(out: dict[str, torch.Tensor], text_0: Sequence[str], text_1: Sequence[str]) -> None:
    """NaN in the caption-based columns of items whose needed caption is empty (in place)."""
    empty = {"input": torch.tensor([not t.strip() for t in text_0]),
             "output": torch.tensor([not t.strip() for t in text_1])}
    for col, needs in CAPTION_NEEDS.items():
        if col in out:
            miss = torch.zeros_like(empty["input"])
            for n in needs:
                miss |= empty[n]
            out[col] = torch.where(miss, torch.full_like(out[col], float("nan")), out[col].float())


class MetricSuite:
    """Every metric of a batch of edits, with its provenance.

    ``clip``: a :class:`ClipSimilarity` (or None to skip CLIP columns); ``lpips``: an
    :class:`LPIPS` (or None to skip LPIPS columns). Pixel columns are always computed.
    """

    def __init__(self, clip: ClipSimilarity | None = None, lpips: LPIPS | None = None, *, success: bool = False):
        self.clip = clip
        self.lpips = lpips
        self.success = success

    def columns(self, *, captions: bool = True, targets: bool = False, masks: bool = False) -> list[str]:
        """The column names a call with these inputs returns, in order."""
        cols: list[str] = []
        if self.clip is not None:
            cols += list(CLIP_COLUMNS) if captions else ["clip_sim_image"]
        if self.lpips is not None:
            cols.append("lpips")
        cols += PIXEL_COLUMNS
        if targets:
            cols += ["target_l1", "target_l2"]
            if self.lpips is not None:
                cols.append("target_lpips")
            if self.clip is not None:
                cols.append("target_clip_image")
        if masks:
            cols += [c for c in MASK_COLUMNS if c != "masked_lpips_outside" or self.lpips is not None]
        if self.success and targets and masks:
            cols += list(SUCCESS_COLUMNS)
        return cols

    def __call__(
        self,
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        text_0: Sequence[str] | None = None,
        text_1: Sequence[str] | None = None,
        *,
        targets: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Metric columns for edits ``inputs -> outputs`` (float ``[N, 3, H, W]`` in [0, 1], same
        shape); ``text_0``/``text_1``: input/output captions (both or neither); ``targets``: the
        exact expected images ``[N, 3, H, W]``; ``masks``: bool ``[N, H, W]``, True = edited.
        Raises ValueError naming the argument for bad inputs."""
        check_images(inputs, "inputs")
        n = inputs.shape[0]
        check_images(outputs, "outputs", n=n)
        if (text_0 is None) != (text_1 is None):
            raise ValueError("text_0/text_1: give both the input and the output captions, or neither")
        out: dict[str, torch.Tensor] = {}
        if self.clip is not None:
            if text_0 is not None:
                sims = self.clip.score(inputs, outputs, text_0, text_1)
                for k in ("sim_0", "sim_1", "sim_direction", "sim_image"):
                    out[f"clip_{k}"] = sims[k]
                _blank_missing_captions(out, text_0, text_1)
            else:
                out["clip_sim_image"] = self.clip.image_similarity(inputs, outputs, names=("inputs", "outputs"))
        if self.lpips is not None:
            out["lpips"] = self.lpips(inputs, outputs)
        for name, fn in (("l1", pixel.l1), ("l2", pixel.l2), ("psnr", pixel.psnr), ("ssim", pixel.ssim)):
            out[name] = fn(inputs, outputs).cpu()
        if targets is not None:
            check_images(targets, "targets", n=n)
            out["target_l1"] = pixel.l1(targets, outputs).cpu()
            out["target_l2"] = pixel.l2(targets, outputs).cpu()
            if self.lpips is not None:
                out["target_lpips"] = self.lpips(targets, outputs)
            if self.clip is not None:
                out["target_clip_image"] = self.clip.image_similarity(targets, outputs, names=("targets", "outputs"))
        if masks is not None:
            out["masked_l1_outside"] = pixel.masked_l1_outside(inputs, outputs, masks).cpu()
            out["masked_psnr_outside"] = pixel.masked_psnr_outside(inputs, outputs, masks).cpu()
            out["masked_ssim_outside"] = pixel.masked_ssim_outside(inputs, outputs, masks).cpu()
            if self.lpips is not None:
                out["masked_lpips_outside"] = pixel.masked_lpips_outside(inputs, outputs, masks, self.lpips).cpu()
        if self.success and targets is not None and masks is not None:
            out.update({k: v.cpu() for k, v in edit_success(inputs, outputs, targets, masks).items()})
        return {k: v.float() for k, v in out.items()}

    def spec(self) -> dict[str, Any]:
        """Provenance of every column: the CLIP and LPIPS specs, pixel and mask definitions, the
        column -> spec-section map, and ``spec_hash`` over all of it (to put in result rows)."""
        rec: dict[str, Any] = {
            "clip": self.clip.spec() if self.clip is not None else None,
            "lpips": self.lpips.spec() if self.lpips is not None else None,
            "pixel": _PIXEL_SPEC,
            "masked": _MASK_SPEC,
            "columns": {
                **{c: "clip" for c in CLIP_COLUMNS + ("target_clip_image",)},
                "lpips": "lpips", "target_lpips": "lpips", "masked_lpips_outside": "lpips+masked",
                **{c: "pixel" for c in PIXEL_COLUMNS + ("target_l1", "target_l2")},
                **{c: "pixel+masked" for c in MASK_COLUMNS[:3]},
            },
        }
        if self.success:  # only then: the spec of suites without the group stays as it was
            rec["success"] = SUCCESS_SPEC
            rec["columns"].update({c: "success" for c in SUCCESS_COLUMNS})
        rec["spec_hash"] = hash_bytes(json.dumps(rec, sort_keys=True, default=str).encode())
        return rec
