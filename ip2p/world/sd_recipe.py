"""Recipe: the world's "Stable Diffusion" (second generation), resumable, in one command.

A CLIPTextModel and a 4-channel UNet trained together on world captions over the world VAE's
latents, saved as a standard ``StableDiffusionPipeline`` folder. Training is SD's: epsilon
prediction, 1000 scaled-linear steps (0.00085..0.012), MSE; captions are replaced by "" 10% of the
time so classifier-free guidance works; latents are ``scaling_factor * posterior.sample()``; the
text encoder learns with the UNet; the EMA weights are saved. The text encoder also learns
that two phrasings of one edit mean the same (``paraphrase_loss``, weight 0.1, on phrasings drawn
from every template, held-out ones included): the world's stand-in for a real text encoder's web
pretraining, without which an instruction phrased with words no training edit used ("erase",
"after sunset") could never be understood (reports/world-diagnosis). Differences from the first
generation: many more steps (the first trained 1,500 and drew its own caption 16% of the time),
bfloat16 autocast on CPU, a larger pool of caption scenes, and checkpoints: rerunning the same
command resumes from the newest one in ``run_dir`` (bit for bit: batches are drawn from RNGs saved
in the checkpoint).

The VAE and tokenizer must already be in ``out`` (``ip2p world train-vae``, ``build-tokenizer``).
"""
from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ip2p.world.recipe import SD_DIR, RunRecord, check_device, latest_checkpoint, n_params, save_checkpoint, setup
from ip2p.data.world.scenes import N_CAPTION_PHRASINGS, caption
from ip2p.data.world.examples import caption_scene
from ip2p.data.world.scenes import render


SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    set_alpha_to_one=False,
    steps_offset=1,
)

TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    hidden_act="quick_gelu",
    projection_dim=64,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 96),
    layers_per_block=1,
    attention_head_dim=4,
    norm_num_groups=16,
)


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(cfg)


def build_unet(cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(cross_attention_dim=cross_attention_dim, **UNET_CONFIG)


def build_scheduler():
    """The sampler world:sd ships with: DDIM on SD's noise schedule (1000 steps, scaled_linear
    0.00085..0.012, epsilon, ``set_alpha_to_one: false``, ``steps_offset: 1``, ``clip_sample: false``
    as SD's file has it; DDIM would otherwise clip predicted latents to [-1, 1]). Not SD's PNDM:
    with PNDM's linear multistep at 20 steps the 8,000-step world:sd draws textured noise around
    its shapes (and SDEdit on it, which uses the model's own scheduler, turns to mush from strength
    0.5), while DDIM on the same weights draws the clean scenes its card measures
    (``world-training/README.md``, "world:sd, and its scheduler")."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(clip_sample=False, **SCHEDULER_CONFIG)


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int, batch: int = 256):
    """Posterior mean and std of ``n`` training caption scenes, and the scenes themselves."""
    from ip2p.data.world.examples import to_tensor

    scenes = [caption_scene("train", i, seed) for i in range(n)]
    device = next(vae.parameters()).device
    means, stds = [], []
    for s in tqdm(range(0, n, batch), desc="encode latents"):
        x = torch.stack([to_tensor(render(sc)) for sc in scenes[s:s + batch]]) * 2 - 1
        post = vae.encode(x.to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds), scenes


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def paraphrase_pairs(rng: np.random.Generator, k: int) -> tuple[list[str], list[str]]:
    """``k`` random world edits, each in two different phrasings drawn from *all* of its category's
    templates, held-out ones included: the world's stand-in for the web text a real text encoder
    is pretrained on, where "erase" and "remove" occur long before any editing data."""
    from ip2p.data.world.edits import CATEGORIES, make_edit
    from ip2p.data.world.scenes import random_scene

    a, b = [], []
    while len(a) < k:
        edit = make_edit(random_scene(rng), CATEGORIES[int(rng.integers(len(CATEGORIES)))], rng, allow_held_out=True)
        if edit is None:
            continue
        texts = edit.phrasings()
        i, j = rng.choice(len(texts), size=2, replace=False)
        a.append(texts[i])
        b.append(texts[j])
    return a, b


def paraphrase_loss(text_encoder, ids: torch.Tensor, eos_id: int, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between the mean token states (up to the first end token) of the two
    halves of ``ids``: phrasings of one edit close, of different edits apart."""
    h = text_encoder(ids)[0].float()
    first_eos = (ids == eos_id).int().argmax(1)
    keep = (torch.arange(ids.shape[1], device=ids.device)[None] <= first_eos[:, None]).float()[..., None]
    z = F.normalize((h * keep).sum(1) / keep.sum(1), dim=-1)
    za, zb = z.chunk(2)
    logits = za @ zb.t() / temperature
    target = torch.arange(len(za), device=za.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _lr_lambda(steps: int, warm: int = 100):
    return lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def _latents(vae, run_dir: Path, n_images: int, seed: int):
    """Posterior means/stds of the caption pool, cached in ``run_dir`` (a resume re-reads them)."""
    from ip2p.util.io import atomic_write_bytes

    cache = run_dir / f"latents-{n_images}-{seed}.pt"
    if cache.exists():
        d = torch.load(cache, weights_only=True)
        return d["mean"], d["std"], [caption_scene("train", i, seed) for i in range(n_images)]
    mean, std, scenes = encode_dataset(vae, n_images, seed)
    buf = io.BytesIO()
    torch.save({"mean": mean, "std": std}, buf)
    atomic_write_bytes(cache, buf.getvalue())
    return mean, std, scenes


@dataclass
class SDRun:
    """Everything one world:sd training run holds: models, EMA copies, optimiser, RNGs, the latent pool."""

    tokenizer: Any
    vae: Any
    text_encoder: Any
    unet: Any
    ema: list
    opt: Any
    sched: Any
    noise_sched: Any
    gen: torch.Generator
    rng: np.random.Generator
    scale: float
    latents: tuple  # (posterior means, stds, scenes) of the caption pool, on the CPU
    device: torch.device = torch.device("cpu")  # of the models; every random draw stays on the CPU

    @property
    def params(self) -> list:
        return list(self.unet.parameters()) + list(self.text_encoder.parameters())


def _build_run(out: Path, run_dir: Path, *, steps: int, lr: float, n_images: int, seed: int, gen,
               device: str | torch.device = "cpu") -> SDRun:
    from diffusers import DDPMScheduler

    from ip2p.models import load_tokenizer, load_vae

    tokenizer = load_tokenizer(out / "tokenizer")
    device = torch.device(device)
    vae = load_vae(out / "vae").requires_grad_(False).to(device)
    text_encoder = build_text_encoder(tokenizer).to(device)
    unet = build_unet(text_encoder.config.hidden_size).to(device)
    ema = [copy.deepcopy(m).requires_grad_(False) for m in (unet, text_encoder)]
    opt = torch.optim.AdamW(list(unet.parameters()) + list(text_encoder.parameters()), lr=lr, weight_decay=1e-2)
    noise_sched = DDPMScheduler(clip_sample=False, **{k: SCHEDULER_CONFIG[k] for k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")})
    return SDRun(tokenizer, vae, text_encoder, unet, ema, opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps)),
                 noise_sched, gen, np.random.default_rng(seed), float(vae.config.scaling_factor),
                 _latents(vae, run_dir, n_images, seed), device)


def _resume(run: SDRun, run_dir: Path) -> tuple[int, float]:
    """Load the newest checkpoint of ``run_dir`` into ``run``; (step, wall seconds so far)."""
    st = latest_checkpoint(run_dir)
    if st is None:
        return 0, 0.0
    for m, sd in zip([run.unet, run.text_encoder, *run.ema], st["models"]):
        m.load_state_dict(sd)
    run.opt.load_state_dict(st["opt"])
    run.sched.load_state_dict(st["sched"])
    run.gen.set_state(st["gen"])
    run.rng.bit_generator.state = st["rng"]
    torch.set_rng_state(st["torch_rng"])
    print(f"resuming {run_dir} from step {st['step']}")
    return st["step"], st["wall_s"]


def _train_step(run: SDRun, step: int, *, batch: int, caption_dropout: float, ema_decay: float, bf16: bool,
                paraphrase_weight: float, paraphrase_batch: int) -> float:
    """One optimiser step: eps MSE on a batch of the caption pool (+ the paraphrase term), then EMA."""
    mean, std, scenes = run.latents
    rng, gen = run.rng, run.gen
    idx = rng.integers(0, len(scenes), size=batch)
    caps = [caption(scenes[i], int(rng.integers(N_CAPTION_PHRASINGS))) if rng.random() >= caption_dropout else ""
            for i in idx]
    ids = tokenize(run.tokenizer, caps)
    i_t = torch.from_numpy(idx)
    z0 = run.scale * (mean[i_t] + std[i_t] * torch.randn(mean[i_t].shape, generator=gen))
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, run.noise_sched.config.num_train_timesteps, (batch,), generator=gen)
    zt = run.noise_sched.add_noise(z0, noise, t)
    dev = run.device
    zt, t, noise, ids = zt.to(dev), t.to(dev), noise.to(dev), ids.to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        pred = run.unet(zt, t, run.text_encoder(ids)[0]).sample
    loss = F.mse_loss(pred.float(), noise)
    if paraphrase_weight > 0:
        pa, pb = paraphrase_pairs(rng, paraphrase_batch)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss + paraphrase_weight * paraphrase_loss(run.text_encoder, tokenize(run.tokenizer, pa + pb).to(dev),
                                                              run.tokenizer.eos_token_id)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    run.sched.step()
    with torch.no_grad():
        d = min(ema_decay, (1 + step) / (10 + step))
        for e, m in zip(run.ema, (run.unet, run.text_encoder)):
            for pe, pm in zip(e.parameters(), m.parameters()):
                pe.lerp_(pm, 1 - d)
    return loss.item()


def _export(run: SDRun, out: Path) -> None:
    """Save the EMA weights as a StableDiffusionPipeline folder in ``out`` (one folder swap)."""
    from diffusers import StableDiffusionPipeline

    from ip2p.util.io import replacing_dir

    unet, text_encoder = (m.to("cpu") for m in run.ema)  # export is the run's last act
    pipe = StableDiffusionPipeline(
        vae=run.vae.to("cpu"), text_encoder=text_encoder, tokenizer=run.tokenizer, unet=unet, scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with replacing_dir(out, start_from_existing=True) as tmp:  # one swap: the old pipeline or the new
        pipe.save_pretrained(str(tmp))


def train_sd(out: Path = SD_DIR, run_dir: Path = Path("runs/world-sd"), steps: int = 8000, batch: int = 32,
             lr: float = 1e-3, n_images: int = 16384, caption_dropout: float = 0.1, ema_decay: float = 0.999,
             seed: int = 0, checkpoint_every: int = 250, bf16: bool = True, threads: int | None = None,
             time_limit_minutes: float | None = None, paraphrase_weight: float = 0.1,
             paraphrase_batch: int = 16, device: str = "cpu") -> dict | None:
    """Train (or resume) world:sd; save the pipeline into ``out`` when ``steps`` are done.

    With ``time_limit_minutes`` the run checkpoints and returns None at the first step past the
    limit; rerunning the same command continues it. ``device`` ("cuda" on a GPU) holds the models;
    every random draw stays on the CPU's generators, so the batches are the CPU run's."""
    device = check_device(device)
    gen = setup(seed, threads)
    out, run_dir = Path(out), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(f"ip2p world train-sd --steps {steps} --batch {batch} --lr {lr} --n-images {n_images} "
                       f"--run-dir {run_dir}" + (f" --device {device}" if device != "cpu" else ""), device=device,
                       steps=steps, batch=batch, lr=lr, n_images=n_images,
                       caption_dropout=caption_dropout, ema_decay=ema_decay, seed=seed, bf16_autocast=bf16,
                       paraphrase_weight=paraphrase_weight, paraphrase_batch=paraphrase_batch,
                       text_config=TEXT_CONFIG, unet_config=UNET_CONFIG, scheduler=SCHEDULER_CONFIG)
    run = _build_run(out, run_dir, steps=steps, lr=lr, n_images=n_images, seed=seed, gen=gen, device=device)
    start, prior_wall = _resume(run, run_dir)
    t_run = time.time()
    record.t0 -= prior_wall
    losses: list[float] = []
    bar = tqdm(range(start, steps), desc="train-sd", initial=start, total=steps)
    for step in bar:
        losses.append(_train_step(run, step, batch=batch, caption_dropout=caption_dropout, ema_decay=ema_decay,
                                  bf16=bf16, paraphrase_weight=paraphrase_weight, paraphrase_batch=paraphrase_batch))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        over = time_limit_minutes is not None and time.time() - t_run > 60 * time_limit_minutes
        if done % checkpoint_every == 0 or done == steps or over:
            save_checkpoint(run_dir, done, {
                "models": [m.state_dict() for m in (run.unet, run.text_encoder, *run.ema)], "opt": run.opt.state_dict(),
                "sched": run.sched.state_dict(), "gen": gen.get_state(), "rng": run.rng.bit_generator.state,
                "wall_s": prior_wall + time.time() - t_run})
        if over and done < steps:
            print(f"time limit: stopped at step {done} of {steps}; rerun the same command to continue")
            return None
    _export(run, out)
    unet, text_encoder = run.ema
    return record.save(out / "unet", final_loss=float(np.mean(losses[-100:])) if losses else None,
                       parameters={"unet": n_params(unet), "text_encoder": n_params(text_encoder)})
