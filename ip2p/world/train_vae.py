"""Recipe: the world's VAE, a diffusers ``AutoencoderKL`` mapping 64x64x3 images to 16x16x4 latents.

Phase 1 trains the whole VAE on freshly rendered training-split scenes with L1 + MSE
reconstruction and a tiny KL term; then the latent standard deviation on training scenes is
measured and stored as ``scaling_factor`` (SD's 0.18215 plays the same role). Phase 2 fine-tunes the
decoder alone (the encoder, hence the latent space and the world SD trained on it, stays fixed) to
sharpen reconstructions. Phase 3 (after ``train-sd``) refines both halves with the latents anchored;
phase 4 makes the posterior nearly deterministic. Phase 5 fine-tunes the decoder alone on the
world's training *edits* (inputs and targets), whose scenes the caption-scene phases never showed it
(empty scenes after a removal, melted or grown shapes): the encoder, hence every latent, is unchanged.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ip2p.models import load_vae
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


def _optimiser_step(loss, opt, sched, params, losses: list[float], bar) -> None:
    """One step of a decoder loop: backward, clip to norm 1, step optimiser and lr, log to ``bar`` every 20."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    losses.append(loss.item())
    if (len(losses) - 1) % 20 == 0:
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")


def finetune_decoder(vae, steps: int, batch: int = 32, lr: float = 5e-4, seed: int = 1) -> list[float]:
    """Phase 2: train the decoder alone on latent samples of a frozen encoder (MSE + L1)."""
    gen = setup(seed)
    vae.train()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    bar = tqdm(range(steps), desc="train-vae[decoder]")
    for step in bar:
        x, _ = caption_batch("train", 12_000_000 + step * batch, batch, seed=0)
        x = x * 2 - 1
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        _optimiser_step((rec - x).pow(2).mean() + 0.5 * (rec - x).abs().mean(), opt, sched, params, losses, bar)
    vae.requires_grad_(True)
    vae.eval()
    return losses


def refine_anchored(vae, steps: int, batch: int = 32, lr: float = 5e-4, anchor_weight: float = 1.0,
                    seed: int = 2) -> dict:
    """Phase 3: train encoder and decoder together while holding the latent means (scaled) close to
    those of the VAE as it was (an L2 anchor), so a diffusion model trained on the old latents stays
    valid. Returns losses and the final mean latent drift (scaled units; latents have std ~1)."""
    import copy

    gen = setup(seed)
    frozen = copy.deepcopy(vae).eval().requires_grad_(False)
    sf = float(vae.config.scaling_factor)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rec_losses, drifts = [], []
    bar = tqdm(range(steps), desc="train-vae[refine]")
    for step in bar:
        x, _ = caption_batch("train", 14_000_000 + step * batch, batch, seed=0)
        x = x * 2 - 1
        with torch.no_grad():
            mu_old = frozen.encode(x).latent_dist.mean
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        rec_loss = (rec - x).pow(2).mean() + 0.5 * (rec - x).abs().mean()
        drift = ((post.mean - mu_old) * sf).pow(2).mean()
        loss = rec_loss + anchor_weight * drift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        rec_losses.append(rec_loss.item())
        drifts.append(drift.item())
        if step % 20 == 0:
            bar.set_postfix(rec=f"{sum(rec_losses[-20:]) / len(rec_losses[-20:]):.4f}",
                            drift=f"{sum(drifts[-20:]) / len(drifts[-20:]):.4f}")
    vae.eval()
    return {"refine_final_rec_loss": sum(rec_losses[-50:]) / 50, "refine_final_drift_mse": sum(drifts[-50:]) / 50}


def refine_vae(out: Path = SD_DIR / "vae", steps: int = 500, batch: int = 32) -> dict:
    """Run phase 3 on the VAE saved in ``out`` (after ``train-sd``), keeping its record."""
    from ip2p.world.recipe import load_record

    out = Path(out)
    rec0 = load_record(out)
    if rec0.get("config", {}).get("refine_steps"):
        raise RuntimeError(f"{out} already holds a refined VAE; refine the phase-2 output")
    vae = load_vae(out)
    record = RunRecord(rec0["command"] + f" && ip2p world train-sd && ip2p world train-vae --refine-steps {steps}",
                       **rec0["config"], refine_steps=steps)
    record.t0 -= rec0["wall_time_s"]
    before = evaluate_vae(vae)
    extra = refine_anchored(vae, steps, batch=batch)
    save_vae(vae, out)
    return record.save(out, parameters=n_params(vae), scaling_factor=rec0["scaling_factor"],
                       phase1_figures=rec0.get("phase1_figures"), phase2_figures=before,
                       decoder_final_loss=rec0.get("decoder_final_loss"), **extra, figures=evaluate_vae(vae))


def train_vae(out: Path = SD_DIR / "vae", steps: int = 700, batch: int = 32, lr: float = 2e-3,
              kl_weight: float = 1e-6, seed: int = 0, decoder_steps: int = 500, decoder_only: bool = False) -> dict:
    """Both phases (or, with ``decoder_only``, phase 2 on the phase-1 VAE already saved in ``out``)."""
    from ip2p.world.recipe import load_record

    out = Path(out)
    if decoder_only:
        rec1 = load_record(out)
        if rec1.get("config", {}).get("decoder_steps"):
            raise RuntimeError(f"{out} already holds a phase-2 VAE; --decoder-only needs the phase-1 output")
        vae = load_vae(out)
        record = RunRecord(rec1["command"].split(" --decoder")[0] + f" --decoder-steps {decoder_steps}",
                           **rec1["config"], decoder_steps=decoder_steps)
        record.t0 -= rec1["wall_time_s"]  # wall time of both phases
        losses = finetune_decoder(vae, decoder_steps, batch=batch)
        save_vae(vae, out)
        return record.save(out, parameters=n_params(vae), scaling_factor=rec1["scaling_factor"],
                           phase1_figures=rec1.get("figures"), decoder_final_loss=sum(losses[-50:]) / 50,
                           figures=evaluate_vae(vae))
    gen = setup(seed)
    record = RunRecord(f"ip2p world train-vae --steps {steps} --batch {batch} --decoder-steps {decoder_steps}",
                       steps=steps, batch=batch, lr=lr, kl_weight=kl_weight, seed=seed, vae_config=VAE_CONFIG,
                       decoder_steps=decoder_steps)
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
    phase1 = evaluate_vae(vae)
    losses = finetune_decoder(vae, decoder_steps, batch=batch) if decoder_steps else [float("nan")] * 50
    save_vae(vae, out)
    return record.save(out, parameters=n_params(vae), scaling_factor=round(scaling, 5), phase1_figures=phase1,
                       decoder_final_loss=sum(losses[-50:]) / 50, figures=evaluate_vae(vae))


POSTERIOR_LOGVAR_SHIFT = -10.0


@torch.no_grad()
def sharpen_posterior(out: Path = SD_DIR / "vae", logvar_shift: float = POSTERIOR_LOGVAR_SHIFT) -> dict:
    """Phase 4: shift the encoder's log-variance output by ``logvar_shift`` (std x e^(shift/2)).

    Mean, mode, decoder and ``scaling_factor`` are unchanged, so reconstructions and world:sd's
    samples are too. Why: the KL term left a posterior std of ~0.26 against a latent std of ~2.7
    (unscaled), so ``scaling_factor * posterior.sample()`` -- InstructPix2Pix's training target --
    carried noise of ~10 % of the signal that no input image can predict. At low noise levels that
    makes copying the input latent a worse eps prediction than ignoring it. SD's VAE posterior is
    nearly deterministic; after the shift (std ~0.001) the world's is too. Only the bias of the
    log-variance half of ``quant_conv`` changes; applying it twice is refused.
    """
    from ip2p.util.io import atomic_write_json
    from ip2p.world.recipe import load_record

    out = Path(out)
    rec0 = load_record(out)
    if rec0.get("config", {}).get("posterior_logvar_shift"):
        raise RuntimeError(f"{out} already holds a sharpened VAE (logvar shift {rec0['config']['posterior_logvar_shift']})")
    vae = load_vae(out)
    x, _ = caption_batch("test", 0, 64, seed=0)
    std_before = float(vae.encode(x * 2 - 1).latent_dist.std.mean())
    vae.quant_conv.bias[vae.config.latent_channels:] += logvar_shift
    std_after = float(vae.encode(x * 2 - 1).latent_dist.std.mean())
    save_vae(vae, out)
    command = rec0.get("command", "ip2p world train-vae") + f" && ip2p world sharpen-vae --logvar-shift {logvar_shift}"
    rec = {**rec0, "command": command, "config": {**rec0.get("config", {}), "posterior_logvar_shift": logvar_shift},
           "posterior_std_before": std_before, "posterior_std_after": std_after}
    atomic_write_json(out / "training.json", rec)
    return rec


@torch.no_grad()
def edit_roundtrip_l1(vae, split: str = "test", n: int = 300, batch: int = 50) -> dict:
    """Mean L1 (images in [0, 1]) of the VAE round trip (posterior mode) of the targets of ``n``
    world edits, overall and per category: the floor under any latent editor's L1 against targets."""
    from ip2p.data.registry import open_dataset

    items = list(open_dataset(f"world:{split}", n=n))
    tgt = torch.stack([e.load_target() for e in items])
    rec = torch.cat([vae.decode(vae.encode(tgt[i:i + batch] * 2 - 1).latent_dist.mode()).sample
                     for i in range(0, n, batch)])
    per = (((rec + 1) / 2).clamp(0, 1) - tgt).abs().flatten(1).mean(1)
    cats = sorted({e.category for e in items})
    return {"split": split, "n": n, "l1_mean": round(float(per.mean()), 4),
            "l1_by_category": {c: round(float(per[[i for i, e in enumerate(items) if e.category == c]].mean()), 4)
                               for c in cats}}


def finetune_decoder_on_edits(out: Path = SD_DIR / "vae", n_items: int = 2000, steps: int = 300, batch: int = 32,
                              lr: float = 5e-4, seed: int = 5, eval_n: int = 300) -> dict:
    """Phase 5: fine-tune the decoder (and post_quant_conv) of the VAE in ``out`` on the inputs and
    targets of ``n_items`` training edits (L1 + MSE, cosine lr), the encoder frozen. Latents are
    encoded once (posterior mode: the sharpened posterior's std is ~0.001). Refused twice."""
    from ip2p.data.registry import open_dataset
    from ip2p.util.io import atomic_write_json
    from ip2p.world.recipe import load_record

    out = Path(out)
    rec0 = load_record(out)
    if rec0.get("config", {}).get("edit_decoder_steps"):
        raise RuntimeError(f"{out} already holds a VAE whose decoder was fine-tuned on edits")
    t0 = time.time()
    gen = setup(seed)
    vae = load_vae(out).eval()
    before = edit_roundtrip_l1(vae, n=eval_n)
    items = list(open_dataset("world:train", n=n_items))
    x = torch.cat([torch.stack([e.load_input() for e in tqdm(items, desc="render inputs")]),
                   torch.stack([e.load_target() for e in tqdm(items, desc="render targets")])]) * 2 - 1
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mode() for i in range(0, len(x), 256)])
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    vae.decoder.train()
    losses = []
    bar = tqdm(range(steps), desc="train-vae[decoder on edits]")
    for step in bar:
        idx = torch.randint(len(x), (batch,), generator=gen)
        rec = vae.decode(z[idx]).sample
        _optimiser_step((rec - x[idx]).abs().mean() + (rec - x[idx]).pow(2).mean(), opt, sched, params, losses, bar)
    vae.eval()
    after = edit_roundtrip_l1(vae, n=eval_n)
    save_vae(vae, out)
    command = rec0.get("command", "ip2p world train-vae") + f" && ip2p world finetune-vae-decoder --items {n_items} --steps {steps}"
    rec = {**rec0, "command": command,
           "config": {**rec0.get("config", {}), "edit_decoder_steps": steps, "edit_decoder_items": n_items,
                      "edit_decoder_batch": batch, "edit_decoder_lr": lr, "edit_decoder_seed": seed},
           "wall_time_s": round(rec0.get("wall_time_s", 0) + time.time() - t0, 1),
           "edit_decoder_final_loss": sum(losses[-50:]) / min(50, len(losses)),
           "edit_roundtrip_l1_before": before, "edit_roundtrip_l1_after": after, "figures": evaluate_vae(vae)}
    atomic_write_json(out / "training.json", rec)
    return rec


def save_vae(vae, out: Path) -> None:
    """Write the VAE into ``out`` as one folder swap (its other files, records and card, kept)."""
    from ip2p.util.io import replacing_dir

    with replacing_dir(out, start_from_existing=True) as tmp:
        vae.save_pretrained(str(tmp))
