"""Recipe: the world's VAE (second generation), resumable, in one command.

A diffusers ``AutoencoderKL`` (64x64x3 <-> 16x16x4) trained from scratch on a mixture of caption
scenes and the inputs and targets of training edits (so empty scenes, puddles, night scenes and
grown shapes are all seen), cosine lr. The reconstruction loss (L1 + MSE) weighs every pixel that
differs from the scene's background ``FOREGROUND_WEIGHT`` times: shapes cover a few percent of a
scene, and with uniform weights a VAE can drop a shape's colour or kind (the first generation
turned a red circle into a striped orange one, and lost a yellow puddle, at a whole-image L1 of
0.018; reports/world-diagnosis). Latents are the posterior mean plus Gaussian noise of a fixed
small std (``LATENT_NOISE``, unscaled units) rather than samples of a learned posterior: the
first generation's posterior noise (std ~1 against a latent std of ~4.5, for a tiny KL term)
swamped exactly the small latent differences that carry colour. Forward and backward run under bfloat16 autocast on CPU (about 1.5x faster on
AVX512-BF16 cores); the weights, the evaluation and every use after training are float32.

After training: ``scaling_factor`` = 1 / std of latent samples (SD's 0.18215 plays this role),
and the posterior is made nearly deterministic (log-variance bias shifted by -10, std x e^-5), as
SD's is, so ``scaling_factor * posterior.sample()`` -- InstructPix2Pix's training target -- carries
no noise an input image cannot predict.

Checkpoints (model, optimiser, scheduler, step, RNG states) go to ``run_dir`` every
``checkpoint_every`` steps; rerunning the same command resumes from the newest one, bit for bit
(batches are a pure function of the step index).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ip2p.world.recipe import (SD_DIR, RunRecord, caption_batch, latest_checkpoint, load_record, n_params,
                               save_checkpoint, setup)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=64,
)
POSTERIOR_LOGVAR_SHIFT = -10.0
FOREGROUND_WEIGHT = 10.0  # loss weight of pixels that differ from the background (pixel (0, 0) of the scene)
LATENT_NOISE = 0.1  # std of the noise added to posterior means in training (unscaled latent units)


def build_vae(latent_channels: int = VAE_CONFIG["latent_channels"]):
    """The recipe's AutoencoderKL; ``latent_channels`` other than the shipped 4 makes another latent
    (and so a world whose world:sd and world:ip2p must be trained on it)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**dict(VAE_CONFIG, latent_channels=latent_channels))


def edit_batch(split: str, start: int, n: int, seed: int = 0) -> torch.Tensor:
    """Inputs and targets of edit items ``start..start+n//2`` interleaved: ``[n, 3, 64, 64]`` in [0, 1]."""
    from ip2p.data.world.examples import make_example

    out = []
    for i in range(start, start + (n + 1) // 2):
        e = make_example(split, i, seed)
        out += [e.input_image, e.target_image]
    return torch.stack(out[:n])


def foreground_weights(x: torch.Tensor, weight: float = FOREGROUND_WEIGHT) -> torch.Tensor:
    """``[N, 1, H, W]``: ``weight`` where a pixel differs from its scene's background, else 1. The
    background colour is pixel (0, 0): shapes sit inside their grid cells and never reach a corner."""
    fg = (x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.02
    return 1.0 + (weight - 1.0) * fg.float()


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Foreground-weighted L1 + MSE, normalised by the weights' sum (images in [-1, 1])."""
    w = foreground_weights(x)
    d = rec - x
    return ((d.abs() + d.pow(2)) * w).sum() / (w.sum() * x.shape[1])


def training_batch(step: int, batch: int, seed: int = 0) -> torch.Tensor:
    """Batch ``step``: half caption scenes, half edit inputs/targets, in [-1, 1]; a pure function of step."""
    half = batch // 2
    caps, _ = caption_batch("train", step * half, half, seed=seed)
    edits = edit_batch("train", step * ((batch - half + 1) // 2), batch - half, seed=seed)
    return torch.cat([caps, edits]) * 2 - 1


@torch.no_grad()
def roundtrip_images(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The VAE round trip (posterior mode) of ``images`` (``[N, 3, H, W]`` in [0, 1]), in [0, 1]."""
    rec = torch.cat([vae.decode(vae.encode(images[i:i + batch] * 2 - 1).latent_dist.mode()).sample
                     for i in range(0, len(images), batch)])
    return ((rec + 1) / 2).clamp(0, 1)


def roundtrip_l1_per_item(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``[N]``: L1 (images in [0, 1]) of each image's VAE round trip (posterior mode)."""
    return (roundtrip_images(vae, images, batch) - images).abs().flatten(1).mean(1)


def roundtrip_l1(vae, split: str = "test", n: int = 192, batch: int = 64) -> dict:
    """Mean L1 (images in [0, 1]) of the VAE round trip (posterior mode) of the *targets* of ``n``
    world edits of ``split``, overall and per category: the floor under a latent editor's error."""
    from ip2p.data.world.examples import make_example

    items = [make_example(split, i) for i in range(n)]
    per = roundtrip_l1_per_item(vae, torch.stack([e.target_image for e in items]), batch)
    cats = sorted({e.category for e in items})
    return {"split": split, "n": n, "l1_mean": round(float(per.mean()), 5),
            "l1_by_category": {c: round(float(per[[i for i, e in enumerate(items) if e.category == c]].mean()), 5)
                               for c in cats}}


def save_vae(vae, out: Path) -> None:
    """Write the VAE into ``out`` as one folder swap (its other files, records and card, kept)."""
    from ip2p.util.io import replacing_dir

    with replacing_dir(out, start_from_existing=True) as tmp:
        vae.save_pretrained(str(tmp))


def _lr_lambda(steps: int, warmup: int = 100):
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))


def train_step(vae, x: torch.Tensor, opt, sched, gen: torch.Generator, bf16: bool = True):
    """One step of the recipe on batch ``x`` (in [-1, 1]): encode to posterior means, add ``LATENT_NOISE``
    drawn from ``gen``, decode, foreground-weighted loss, clipped AdamW step, scheduler step.
    Returns (loss, reconstruction)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        mean = vae.encode(x).latent_dist.mean
        rec = vae.decode(mean + LATENT_NOISE * torch.randn(mean.shape, generator=gen)).sample.float()
    loss = reconstruction_loss(rec, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss, rec


def train_vae(out: Path = SD_DIR / "vae", run_dir: Path = Path("runs/world-vae"), steps: int = 3000, batch: int = 32,
              lr: float = 8e-4, seed: int = 0, checkpoint_every: int = 250,
              bf16: bool = True, threads: int | None = None, eval_n: int = 192,
              init_checkpoint: Path | None = None, latent_channels: int = VAE_CONFIG["latent_channels"]) -> dict:
    """Train (or resume) the VAE, then set its scale, sharpen its posterior and save it into ``out``.

    ``init_checkpoint``: start from the weights of another run's checkpoint (a second phase with its
    own optimiser and schedule, e.g. a lower lr); its own checkpoints still make it resumable."""
    gen = setup(seed, threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = (f"ip2p world train-vae --steps {steps} --batch {batch} --lr {lr} --seed {seed}"
               f" --run-dir {run_dir}" + ("" if bf16 else " --no-bf16")
               + (f" --init-checkpoint {init_checkpoint}" if init_checkpoint else "")
               + (f" --latent-channels {latent_channels}" if latent_channels != VAE_CONFIG["latent_channels"] else ""))
    record = RunRecord(command, steps=steps, batch=batch, lr=lr, seed=seed,
                       vae_config=dict(VAE_CONFIG, latent_channels=latent_channels),
                       foreground_weight=FOREGROUND_WEIGHT, latent_noise=LATENT_NOISE,
                       bf16_autocast=bf16, data="half caption scenes, half training edit inputs/targets",
                       posterior_logvar_shift=POSTERIOR_LOGVAR_SHIFT)
    vae = build_vae(latent_channels)
    if init_checkpoint is not None:
        vae.load_state_dict(torch.load(init_checkpoint, map_location="cpu", weights_only=False)["model"])
        record.config["init_checkpoint"] = str(init_checkpoint)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))
    start, prior_wall, t_run = 0, 0.0, time.time()
    state = latest_checkpoint(run_dir)
    if state is not None:
        try:
            vae.load_state_dict(state["model"])
        except RuntimeError as e:  # e.g. a run of another latent channel count
            from ip2p.errors import SpecError

            raise SpecError(f"{run_dir}: its checkpoint at step {state['step']} is of another VAE than this run's "
                            f"(latent_channels={latent_channels}); use another --run-dir. {e}") from None
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start, prior_wall = state["step"], state.get("wall_s", 0.0)
        print(f"resuming {run_dir} from step {start}")
    record.t0 -= prior_wall
    vae.train()
    bar = tqdm(range(start, steps), desc="train-vae", initial=start, total=steps)
    for step in bar:
        x = training_batch(step, batch, seed)
        loss, rec = train_step(vae, x, opt, sched, gen, bf16)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", l1=f"{(rec - x).abs().mean().item() / 2:.4f}")
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(run_dir, step + 1, {"model": vae.state_dict(), "opt": opt.state_dict(),
                                                "sched": sched.state_dict(), "gen": gen.get_state(),
                                                "wall_s": prior_wall + time.time() - t_run})
    vae.eval()
    return finish_vae(vae, out, record, gen, seed, eval_n)


@torch.no_grad()
def finish_vae(vae, out: Path, record: RunRecord, gen: torch.Generator, seed: int = 0, eval_n: int = 192) -> dict:
    """Scale, sharpen, evaluate and save the trained VAE with its record."""
    x, _ = caption_batch("train", 10_000_000, 256, seed=seed)
    post = vae.encode(x * 2 - 1).latent_dist
    scaling = round(1.0 / float(post.mean.std()), 5)
    vae.register_to_config(scaling_factor=scaling)
    std_before = float(post.std.mean())
    vae.quant_conv.bias[vae.config.latent_channels:] += POSTERIOR_LOGVAR_SHIFT
    std_after = float(vae.encode(x[:64] * 2 - 1).latent_dist.std.mean())
    figures = roundtrip_l1(vae, "test", n=eval_n)
    Path(out).mkdir(parents=True, exist_ok=True)
    save_vae(vae, Path(out))
    return record.save(out, parameters=n_params(vae), scaling_factor=scaling, posterior_std_before=std_before,
                       posterior_std_after=std_after, roundtrip_test_targets=figures,
                       roundtrip_train_targets=roundtrip_l1(vae, "train", n=eval_n))


# The shipped VAE's phases, each from the previous phase's last checkpoint with its own optimiser,
# cosine schedule, lr and seed (phase records: the VAE's training-phase<k>.json and training.json).
PHASES = (dict(steps=3000, lr=8e-4, seed=0), dict(steps=1500, lr=3e-4, seed=1), dict(steps=1000, lr=1.5e-4, seed=2))


def train_vae_phases(out: Path = SD_DIR / "vae", run_dir: Path = Path("runs/world-vae"),
                     phases: tuple[dict, ...] = PHASES, **kw) -> dict:
    """Every phase in turn into ``run_dir/phase-<k>`` (each resumable; a finished phase is not trained
    again), the last one saved into ``out`` with the earlier phases' records beside its own."""
    from ip2p.util.io import atomic_write_json

    run_dir, init, records = Path(run_dir), None, []
    for k, phase in enumerate(phases, 1):
        phase_dir = run_dir / f"phase-{k}"
        init_next = phase_dir / f"checkpoint-{phase['steps']}.pt"
        if k < len(phases) and (phase_dir / "vae" / "training.json").is_file() and init_next.is_file():
            records.append(load_record(phase_dir / "vae"))  # finished: its evaluation is not redone
        else:
            records.append(train_vae(Path(out) if k == len(phases) else phase_dir / "vae", run_dir=phase_dir,
                                     init_checkpoint=init, **phase, **kw))
        init = init_next
    for k, rec in enumerate(records[:-1], 1):
        atomic_write_json(Path(out) / f"training-phase{k}.json", rec)
    return records[-1]
