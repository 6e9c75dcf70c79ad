"""Pixel metrics of image pairs and their masked forms, as pure functions of batched tensors.

All functions take ``reference`` and ``image``: float ``[N, 3, H, W]`` in [0, 1], same shape
(ValueError naming the argument otherwise), and return a float32 ``[N]`` tensor on the inputs'
device, one value per item. ``data_range`` is 1.

- ``l1``   = mean |image - reference| over C, H, W                                    (0 = equal)
- ``l2``   = mean (image - reference)^2 over C, H, W, i.e. the mean squared error      (0 = equal)
- ``psnr`` = 10 log10(1 / l2) in dB (torchmetrics); +inf for identical images
- ``ssim`` = mean of the SSIM map (torchmetrics: Gaussian window 11, sigma 1.5, K = 0.01, 0.03,
  reflect padding), 1 = equal

Masked forms take ``mask``: bool ``[N, H, W]`` (or ``[H, W]`` for the whole batch), True = edited
region, and measure preservation OUTSIDE the mask only, normalised by that area (unlike
PIE-Bench, which zero-fills the region and divides by the whole image). Before the comparison the
edited region of ``image`` is replaced by ``reference``'s pixels, so nothing inside the mask can
reach the result, not even through SSIM's window or LPIPS's receptive fields near the boundary;
the per-pixel maps (absolute / squared error, torchmetrics' full SSIM image, LPIPS's spatial map)
are then averaged over the unmasked pixels. An item whose mask covers the whole image has no
outside and gets NaN.
"""
from __future__ import annotations

import torch

from ip2p.metrics.checks import check_images, check_mask, check_same_shape


def _pair(reference: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_images(reference, "reference")
    check_images(image, "image", n=reference.shape[0])
    check_same_shape(reference, image, "reference", "image")
    return reference.float(), image.to(reference.device).float()


def l1(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per item, ``[N]``."""
    a, b = _pair(reference, image)
    return (b - a).abs().flatten(1).mean(1)


def l2(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean squared error per item, ``[N]`` (the "L2"/"MSE" of editing benchmarks)."""
    a, b = _pair(reference, image)
    return (b - a).square().flatten(1).mean(1)


def psnr(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per item, ``[N]``, data range 1 (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # lazy: torchmetrics imports slowly

    a, b = _pair(reference, image)
    return peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim_map(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The full SSIM map ``[N, 3, H, W]`` (torchmetrics ``return_full_image``); its mean is ``ssim``.
    Computed in float64: torchmetrics forms the local variances as E[x^2] - E[x]^2, which in float32
    cancels to small negative values on flat regions, clamps them to 0 but not the covariance, and
    so gives SSIM(x, x) < 1 (0.9997 on the small world's flat scenes); in float64 it is 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pair(reference, image)
    _, full = structural_similarity_index_measure(b.double(), a.double(), data_range=1.0, reduction="none",
                                                  return_full_image=True)
    return full.float()


def ssim(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Structural similarity per item, ``[N]`` (torchmetrics, data range 1, float64: see ``ssim_map``)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pair(reference, image)
    return structural_similarity_index_measure(b.double(), a.double(), data_range=1.0, reduction="none").float()


# ----------------------------------------------------------------------------- masked
def outside_mask(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor):
    """Checked inputs for masked metrics: ``(reference, image with the edited region replaced by
    reference, outside = ~mask as float [N, 1, H, W], outside area per item [N])``."""
    a, b = _pair(reference, image)
    n, _, h, w = a.shape
    m = check_mask(mask, "mask", n=n, height=h, width=w).to(a.device)
    outside = (~m)[:, None].float()
    composite = torch.where(m[:, None], a, b)
    return a, composite, outside, outside.flatten(1).sum(1)


def _mean_outside(pixel_map: torch.Tensor, outside: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Average of ``pixel_map [N, C, H, W]`` over channels and the outside pixels (NaN if none)."""
    total = (pixel_map * outside).flatten(1).sum(1) / pixel_map.shape[1]
    return torch.where(area > 0, total / area.clamp_min(1), torch.full_like(total, float("nan")))


def masked_l1_outside(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the pixels outside ``mask`` (True = edited), ``[N]``."""
    a, b, outside, area = outside_mask(reference, image, mask)
    return _mean_outside((b - a).abs(), outside, area)


def masked_l2_outside(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the pixels outside ``mask``, ``[N]``."""
    a, b, outside, area = outside_mask(reference, image, mask)
    return _mean_outside((b - a).square(), outside, area)


def masked_psnr_outside(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / masked_l2_outside)`` in dB, ``[N]``; +inf when the outside is unchanged."""
    return 10.0 * torch.log10(1.0 / masked_l2_outside(reference, image, mask))


def masked_ssim_outside(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the SSIM map over the pixels outside ``mask`` (edited region pasted from the
    reference first), ``[N]``; equals ``ssim`` for an all-False mask."""
    a, b, outside, area = outside_mask(reference, image, mask)
    return _mean_outside(ssim_map(a, b), outside, area)


def masked_lpips_outside(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, lpips) -> torch.Tensor:
    """Mean of LPIPS's spatial map over the pixels outside ``mask`` (edited region pasted from the
    reference first), ``[N]``; ``lpips`` is an :class:`ip2p.metrics.LPIPS`."""
    a, b, outside, area = outside_mask(reference, image, mask)
    lmap = lpips(a, b, spatial=True).to(a.device)[:, None]
    return _mean_outside(lmap, outside, area)
