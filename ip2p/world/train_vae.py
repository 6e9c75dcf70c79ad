"""Recipe: the world's VAE, a diffusers ``AutoencoderKL`` mapping 64x64x3 images to 16x16x4 latents.

Trained on freshly rendered training-split scenes with L1 + MSE reconstruction and a tiny KL
term; at the end the latent standard deviation on training scenes is measured and stored as
``scaling_factor`` (SD's 0.18215 plays the same role).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from ip2p.world.recipe import SD_DIR, RunRecord, caption_batch, n_params, psnr, setup

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=64,
)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


@torch.no_grad()
def evaluate_vae(vae, n: int = 64) -> dict:
    """Reconstruction PSNR (posterior mode) on ``n`` test-split scenes."""
    x, _ = caption_batch("test", 0, n)
    rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample
    p = psnr((rec + 1) / 2, x)
    return {"test_psnr_db_mean": round(float(p.mean()), 2), "test_psnr_db_min": round(float(p.min()), 2), "n_test": n}


def train_vae(out: Path = SD_DIR / "vae", steps: int = 700, batch: int = 32, lr: float = 2e-3,
              kl_weight: float = 1e-6, seed: int = 0) -> dict:
    gen = setup(seed)
    record = RunRecord(f"ip2p world train-vae --steps {steps} --batch {batch}", steps=steps, batch=batch, lr=lr,
                       kl_weight=kl_weight, seed=seed, vae_config=VAE_CONFIG)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    bar = tqdm(range(steps), desc="train-vae")
    for step in bar:
        x, _ = caption_batch("train", step * batch, batch, seed=seed)
        x = x * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl.item():.1f}")
    vae.eval()
    with torch.no_grad():  # latent scale, as SD's scaling_factor: 1 / std of latent samples
        x, _ = caption_batch("train", 10_000_000, 256, seed=seed)
        post = vae.encode(x * 2 - 1).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        scaling = 1.0 / float(z.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    out = Path(out)
    vae.save_pretrained(str(out))
    figures = evaluate_vae(vae)
    return record.save(out, parameters=n_params(vae), scaling_factor=round(scaling, 5), figures=figures)
