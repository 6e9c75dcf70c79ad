"""Validation grid during training: for a few fixed examples, input | edited | target (when known),
sampled with diffusers' InstructPix2Pix pipeline (Euler ancestral, sI / sT from the config, a
fixed seed per example), saved as ``validation/step-XXXXXXXX.png`` and logged to the trackers."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def unet_copy(trained, ema=None, device="cpu", dtype=torch.float32):
    """A fresh UNet with the trained (or, with ``ema``, the EMA) weights; the training copy is untouched."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(trained.config)
    unet.load_state_dict(trained.state_dict())
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.to(device)
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    return unet.eval()


def fit_for_model(img: torch.Tensor, resolution: int) -> torch.Tensor:
    """Shrink ``[3, H, W]`` so its long side is at most ``resolution``, sides multiples of 8."""
    h, w = img.shape[-2:]
    f = min(1.0, resolution / max(h, w))
    nh, nw = max(8, int(h * f) // 8 * 8), max(8, int(w * f) // 8 * 8)
    if (nh, nw) == (h, w):
        return img
    return F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]


@torch.no_grad()
def validation_grid(pipe, examples, *, steps: int, image_guidance: float, text_guidance: float, seed: int,
                    resolution: int) -> torch.Tensor:
    """A ``[3, rows*H, cols*W]`` grid, one row per example: input | edited | target."""
    rows = []
    size = None
    for k, ex in enumerate(examples):
        img = fit_for_model(ex.load_input().float(), resolution)
        size = size or img.shape[-2:]
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0] if img.shape[-2:] != size else img
        g = torch.Generator().manual_seed(seed + k)
        out = pipe(ex.instruction, image=img[None], num_inference_steps=steps, image_guidance_scale=image_guidance,
                   guidance_scale=text_guidance, generator=g, output_type="pt").images[0].float().cpu()
        cells = [img, out.clamp(0, 1)]
        tgt = ex.load_target()
        if tgt is not None:
            cells.append(F.interpolate(tgt[None].float(), size=size, mode="bilinear", align_corners=False)[0])
        rows.append(torch.cat(cells, dim=-1))
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1])) for r in rows]
    return torch.cat(rows, dim=-2)


def run_validation(accelerator, cfg, step, trained, ema, vae, text_encoder, tokenizer, noise_scheduler, examples,
                   weight_dtype) -> Path:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from ip2p.util.io import save_image

    unet = unet_copy(trained, ema, accelerator.device, weight_dtype)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with accelerator.autocast():
        grid = validation_grid(pipe, examples, steps=cfg.val_steps, image_guidance=cfg.val_image_guidance,
                               text_guidance=cfg.val_text_guidance, seed=cfg.seed, resolution=cfg.resolution)
    path = save_image(grid, Path(cfg.out) / "validation" / f"step-{step:08d}.png")
    if cfg.report_to == "tensorboard":
        try:
            accelerator.get_tracker("tensorboard", unwrap=True).add_image("validation", grid, step)
        except Exception as e:  # a tracker without images must not stop training  # noqa: BLE001
            import logging

            logging.getLogger("ip2p.train").warning("could not log the validation grid to tensorboard: %s", e)
    del pipe, unet
    return path
