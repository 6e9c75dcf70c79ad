"""Dual classifier-free guidance of InstructPix2Pix, as a pure function of tensors.

One model call evaluates a batch of three copies of the latent ``z``:

    text conditioning   [instruction, "", ""]
    image conditioning  [E(img),   E(img), 0]

giving ``out_cond``, ``out_img_cond``, ``out_uncond``. The guided output is (Brooks et al. eq. 3)

    out_uncond + s_T * (out_cond - out_img_cond) + s_I * (out_img_cond - out_uncond)

for every s_I and s_T (s_I < 1 and s_T <= 1 included): unlike diffusers' pipeline there is no
switch that silently falls back to one conditional pass. The formula is affine with weights that
sum to 1, so it is the same whether applied to noise predictions or to denoised estimates.
"""
from __future__ import annotations

import torch

__all__ = ["dual_guidance", "as_scale", "cfg_batch", "split_cfg_output"]


def as_scale(value, batch: int, *, like: torch.Tensor, name: str) -> torch.Tensor:
    """A guidance scale as a ``[B, 1, 1, 1]`` tensor: scalar broadcast, or one value per sample."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"{name}: expected a scalar or {batch} values, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: scales must be finite, got {t.tolist()}")
    return t.to(device=like.device, dtype=like.dtype).view(batch, *([1] * (like.ndim - 1)))


def dual_guidance(
    out_cond: torch.Tensor,
    out_img_cond: torch.Tensor,
    out_uncond: torch.Tensor,
    guidance_scale,
    image_guidance_scale,
) -> torch.Tensor:
    """``out_uncond + sT * (out_cond - out_img_cond) + sI * (out_img_cond - out_uncond)``.

    Args:
        out_cond: model output with text and image conditioning, ``[B, ...]``.
        out_img_cond: output with image conditioning only (null text).
        out_uncond: output with neither (null text, zero image latent).
        guidance_scale: s_T, a scalar or ``B`` values.
        image_guidance_scale: s_I, a scalar or ``B`` values.
    """
    if not (out_cond.shape == out_img_cond.shape == out_uncond.shape):
        raise ValueError(
            f"guidance outputs differ in shape: {tuple(out_cond.shape)}, {tuple(out_img_cond.shape)}, {tuple(out_uncond.shape)}"
        )
    b = out_cond.shape[0]
    s_t = as_scale(guidance_scale, b, like=out_cond, name="guidance_scale")
    s_i = as_scale(image_guidance_scale, b, like=out_cond, name="image_guidance_scale")
    return out_uncond + s_t * (out_cond - out_img_cond) + s_i * (out_img_cond - out_uncond)


def cfg_batch(
    z: torch.Tensor, text_emb: torch.Tensor, null_text_emb: torch.Tensor, image_latent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 3B model batch in diffusers' order ``[text+img, img only, uncond]``.

    Returns ``(z3, text3, image3)``: the latent repeated three times, text conditioning
    ``[T, null, null]`` and image conditioning ``[E, E, 0]``.
    """
    b = z.shape[0]
    null = null_text_emb.expand(b, *null_text_emb.shape[1:]) if null_text_emb.shape[0] == 1 else null_text_emb
    z3 = torch.cat([z, z, z])
    text3 = torch.cat([text_emb, null, null])
    image3 = torch.cat([image_latent, image_latent, torch.zeros_like(image_latent)])
    return z3, text3, image3


def split_cfg_output(out: torch.Tensor, guidance_scale, image_guidance_scale) -> torch.Tensor:
    """Split a 3B model output in ``cfg_batch`` order and apply ``dual_guidance``."""
    out_cond, out_img_cond, out_uncond = out.chunk(3)
    return dual_guidance(out_cond, out_img_cond, out_uncond, guidance_scale, image_guidance_scale)
