"""Classifier-free guidance: InstructPix2Pix's dual guidance and plain CFG, as pure functions of
tensors, and ``GuidedUNet``, the guided model call of InstructPix2Pix (editor, fast path, post-edit).

One model call evaluates a batch of three copies of the latent ``z``:

    text conditioning   [instruction, "", ""]
    image conditioning  [E(img),   E(img), 0]

giving ``out_cond``, ``out_img_cond``, ``out_uncond``. The guided output is (Brooks et al. eq. 3)

    out_uncond + s_T * (out_cond - out_img_cond) + s_I * (out_img_cond - out_uncond)

for every s_I and s_T (s_I < 1 and s_T <= 1 included): unlike diffusers' pipeline there is no
switch that silently falls back to one conditional pass. The formula is affine with weights that
sum to 1, so it is the same whether applied to noise predictions or to denoised estimates.

Plain classifier-free guidance (``cfg``: SDEdit, the pair generator) is
``out_uncond + s * (out_cond - out_uncond)``.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import torch

from ip2p.sampling import no_region

__all__ = ["dual_guidance", "cfg", "as_scale", "cfg_batch", "split_cfg_output", "GuidedUNet"]


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
    return dual_formula(out_cond, out_img_cond, out_uncond, s_t, s_i)


def dual_formula(out_cond, out_img_cond, out_uncond, s_t: torch.Tensor, s_i: torch.Tensor) -> torch.Tensor:
    """Brooks et al. eq. 3 on scales already checked and shaped (``as_scale``): the one place the
    formula is written."""
    return out_uncond + s_t * (out_cond - out_img_cond) + s_i * (out_img_cond - out_uncond)


def cfg(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale) -> torch.Tensor:
    """Classifier-free guidance ``out_uncond + s * (out_cond - out_uncond)``; ``guidance_scale``: a
    scalar or one value per sample (``[B]``)."""
    if out_cond.shape != out_uncond.shape:
        raise ValueError(f"guidance outputs differ in shape: {tuple(out_cond.shape)}, {tuple(out_uncond.shape)}")
    s = as_scale(guidance_scale, out_cond.shape[0], like=out_cond, name="guidance_scale")
    return out_uncond + s * (out_cond - out_uncond)


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


class GuidedUNet:
    """``model(x_in, t)``: one UNet call on the 3B batch ``[text+img, img only, uncond]`` and dual
    guidance, the model the editor's samplers call. The conditioning batch and the scales are built
    once per chunk (``as_scale`` checks finiteness with a host read, which would synchronise the
    GPU at every step). ``unet(sample, t, encoder_hidden_states)`` returns the raw output (the eager
    module's call, or ``ip2p.fastpath.PreparedUNet``: compiled, CUDA graphs).

    Hooks: ``region(name)`` encloses the UNet call (``"unet"``) and the guidance (``"guidance"``);
    ``on_branches(out_cond, out_img_cond, out_uncond)`` sees the three float32 branch outputs of
    every call (post-edit's edit score)."""

    def __init__(self, unet: Callable, image_latent: torch.Tensor, text_emb: torch.Tensor, null_emb: torch.Tensor,
                 guidance_scale, image_guidance_scale, *, dtype: torch.dtype,
                 region: Callable[[str], ContextManager] = no_region, on_branches: Callable | None = None):
        self.unet = unet
        self.dtype = dtype
        self.region = region
        self.on_branches = on_branches
        self.batch = b = image_latent.shape[0]
        image_latent = image_latent.to(dtype)
        _, self.text3, self.image3 = cfg_batch(image_latent, text_emb.to(dtype), null_emb.to(dtype), image_latent)
        like = torch.empty((b, 1, 1, 1), dtype=torch.float32, device=image_latent.device)
        # validated here, once (a finiteness check reads the host); the loop uses them as they are
        self.s_t = as_scale(guidance_scale, b, like=like, name="guidance_scale")
        self.s_i = as_scale(image_guidance_scale, b, like=like, name="image_guidance_scale")

    def unet_output(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The raw 3B UNet output for sampler-scaled latents ``x_in`` ``[B, ...]`` at timestep ``t``."""
        z = x_in.to(self.dtype)
        sample = torch.cat([torch.cat([z, z, z]), self.image3], dim=1)
        return self.unet(sample, t.reshape(-1).expand(3 * self.batch), self.text3)

    def guide(self, out: torch.Tensor) -> torch.Tensor:
        """``uncond + sT * (cond - img_cond) + sI * (img_cond - uncond)`` of a 3B output (float32)."""
        out_cond, out_img_cond, out_uncond = out.float().chunk(3)
        if self.on_branches is not None:
            self.on_branches(out_cond, out_img_cond, out_uncond)
        return dual_formula(out_cond, out_img_cond, out_uncond, self.s_t, self.s_i)

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with self.region("unet"):
            out = self.unet_output(x_in, t)
        with self.region("guidance"):
            return self.guide(out)
