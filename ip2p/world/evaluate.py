"""Sanity figures of the world's models on the test split (they go into the model cards and tests).

- VAE: reconstruction PSNR on 64 test scenes.
- CLIP: image->caption retrieval top-1 among 64 test captions; zero-shot colour and shape accuracy
  on single-shape test scenes (candidates: the scene's own caption with the colour, or the kind,
  replaced by each alternative; chance 1/8 and 1/4).
- SD: text-to-image samples (DDIM, 20 steps, guidance 7.5) scored by the metric CLIP with their own
  captions versus the same images with shuffled captions.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ip2p.data.world.examples import caption_scene, to_tensor
from ip2p.data.world.scenes import COLOURS, KINDS, Scene, caption, render


@torch.no_grad()
def clip_features(folder: str | Path, images: torch.Tensor | None = None, texts: list[str] | None = None):
    """L2-normalised image and text features of a CLIP folder (loaded through ``ip2p.metrics``)."""
    from ip2p.metrics import load_clip
    from ip2p.metrics.preprocess import paper_preprocess

    clip = load_clip(str(folder), device="cpu")
    pre = clip.preprocess_cfg
    fi = ft = None
    if images is not None:
        x = paper_preprocess(images, clip.image_size, pre["mean"], pre["std"])
        fi = torch.nn.functional.normalize(clip.model.encode_image(x), dim=-1)
    if texts is not None:
        ft = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer(list(texts))), dim=-1)
    return fi, ft


def eval_caption_items(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[str], list[Scene]]:
    from ip2p.world.recipe import caption_batch

    imgs, caps = caption_batch("test", 0, n, seed=seed)
    return imgs, caps, [caption_scene("test", i, seed) for i in range(n)]


def _single_shape_scenes(n: int) -> list[Scene]:
    out, i = [], 0
    while len(out) < n:
        s = caption_scene("test", 100_000 + i)
        i += 1
        if len(s.shapes) == 1 and s.shapes[0].kind in KINDS:
            out.append(s)
    return out


@torch.no_grad()
def zero_shot(folder: str | Path, attribute: str, n: int = 96) -> float:
    """Accuracy of picking the right colour (or kind) among captions differing only in it."""
    scenes = _single_shape_scenes(n)
    values = list(COLOURS) if attribute == "colour" else list(KINDS)
    imgs = torch.stack([to_tensor(render(s)) for s in scenes])
    texts = []
    for s in scenes:
        for v in values:
            shape = dataclasses.replace(s.shapes[0], **{attribute if attribute == "colour" else "kind": v})
            texts.append(caption(s.replace(shapes=(shape,)), 0))
    fi, ft = clip_features(folder, imgs, texts)
    sims = (fi[:, None, :] * ft.view(n, len(values), -1)).sum(-1)
    truth = torch.tensor([values.index(getattr(s.shapes[0], "colour" if attribute == "colour" else "kind"))
                          for s in scenes])
    return float((sims.argmax(1) == truth).float().mean())


@torch.no_grad()
def retrieval_top1(folder: str | Path, n: int = 64) -> float:
    imgs, caps, _ = eval_caption_items(n)
    fi, ft = clip_features(folder, imgs, caps)
    return float(((fi @ ft.t()).argmax(1) == torch.arange(n)).float().mean())


def evaluate_clip(folder: str | Path) -> dict:
    return {
        "retrieval_top1_64": round(retrieval_top1(folder), 3),
        "zero_shot_colour_acc": round(zero_shot(folder, "colour"), 3),
        "zero_shot_colour_chance": round(1 / len(COLOURS), 3),
        "zero_shot_shape_acc": round(zero_shot(folder, "kind"), 3),
        "zero_shot_shape_chance": round(1 / len(KINDS), 3),
    }


@torch.no_grad()
def sd_samples(sd_folder: str | Path, captions: list[str], steps: int = 20, guidance: float = 7.5, seed: int = 0):
    """Images ``[N, 3, 64, 64]`` in [0, 1] from the world SD (DDIM), one generator per image."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ip2p.models import load_components

    c = load_components(str(sd_folder), kind="t2i")
    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(captions))]
    out = pipe(captions, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt")
    return out.images


@torch.no_grad()
def evaluate_sd(sd_folder: str | Path, clip_folder: str | Path, n: int = 32) -> dict:
    real, caps, _ = eval_caption_items(n)
    imgs = sd_samples(sd_folder, caps)
    fi, ft = clip_features(clip_folder, imgs, caps)
    fr, _ = clip_features(clip_folder, real)
    own = (fi * ft).sum(-1)
    perm = torch.roll(torch.arange(n), 1)  # a derangement: every image gets another caption
    shuffled = (fi * ft[perm]).sum(-1)
    return {
        "clip_score_own_caption": round(float(own.mean()), 4),
        "clip_score_shuffled_caption": round(float(shuffled.mean()), 4),
        "clip_top1_among_n": round(float(((fi @ ft.t()).argmax(1) == torch.arange(n)).float().mean()), 3),
        "reference_true_scenes_own_caption": round(float((fr * ft).sum(-1).mean()), 4),
        "reference_true_scenes_shuffled_caption": round(float((fr * ft[perm]).sum(-1).mean()), 4),
        "n": n, "steps": 20, "guidance": 7.5, "sampler": "DDIM",
    }


@torch.no_grad()
def evaluate_vae(vae_folder: str | Path, n: int = 192) -> dict:
    """Round-trip L1 (posterior mode) of the targets of ``n`` test edits, per category, and the
    PSNR of 64 test caption scenes' reconstructions (ip2p.metrics.pixel.psnr: torchmetrics, range 1)."""
    from ip2p.metrics.pixel import psnr
    from ip2p.models import load_vae
    from ip2p.world.recipe import caption_batch
    from ip2p.world.vae_recipe import roundtrip_l1

    vae = load_vae(vae_folder)
    x, _ = caption_batch("test", 0, 64)
    rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
    p = psnr(x, rec)
    rt = roundtrip_l1(vae, "test", n=n)
    return {"test_psnr_db_mean": round(float(p.mean()), 2), "test_psnr_db_min": round(float(p.min()), 2),
            "roundtrip_l1_test_targets": rt["l1_mean"], "roundtrip_l1_by_category": rt["l1_by_category"],
            "n_test_targets": n}


__all__ = ["evaluate_clip", "evaluate_sd", "evaluate_vae", "retrieval_top1", "zero_shot", "sd_samples", "clip_features"]
