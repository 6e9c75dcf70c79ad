"""Conditioning dropout of InstructPix2Pix training, as a pure function of uniform draws.

Per sample, one r ~ U(0, 1) decides (REFERENCE.md, "Training"; p = 0.05 in the paper):
the text becomes the embedding of "" if r < 2p, and the image latent becomes 0 if p <= r < 3p.
Net: text only dropped with probability p (r < p), both with p (p <= r < 2p), image only with p
(2p <= r < 3p), nothing with 1 - 3p. This lets the model learn c_T- and c_I-free predictions for
classifier-free guidance over both conditionings.
"""
from __future__ import annotations

import torch


def conditioning_dropout_masks(r: torch.Tensor, p: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text, drop_image): bool tensors shaped like ``r`` (uniform draws in [0, 1))."""
    if not 0.0 <= p <= 1.0 / 3.0:
        raise ValueError(f"conditioning dropout probability must be in [0, 1/3], got {p}")
    drop_text = r < 2 * p
    drop_image = (r >= p) & (r < 3 * p)
    return drop_text, drop_image


def apply_conditioning_dropout(text_embeddings: torch.Tensor, null_text_embedding: torch.Tensor,
                               image_latents: torch.Tensor, r: torch.Tensor, p: float = 0.05):
    """Text embeddings ``[B, L, D]`` and image latents ``[B, C, h, w]`` after dropout.

    ``null_text_embedding`` is the encoder's output for "" (``[1, L, D]`` or ``[L, D]``); a dropped
    image latent is zeros.
    """
    drop_text, drop_image = conditioning_dropout_masks(r.to(text_embeddings.device), p)
    null = null_text_embedding.reshape(1, *text_embeddings.shape[1:]).to(text_embeddings)
    text = torch.where(drop_text[:, None, None], null, text_embeddings)
    image = image_latents * (~drop_image).to(image_latents.dtype)[:, None, None, None]
    return text, image
