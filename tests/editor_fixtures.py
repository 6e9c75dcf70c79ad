"""Tiny real InstructPix2Pix models built in code (nothing downloaded) for editor tests."""
from __future__ import annotations

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

from ip2p.models import build_builtin


def tiny_pipe(seed: int = 0, scheduler_cls=None) -> StableDiffusionInstructPix2PixPipeline:
    c = build_builtin("tiny", seed=seed)
    sched = c.scheduler if scheduler_cls is None else scheduler_cls.from_config(c.scheduler.config)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rand_image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
