"""InstructPix2Pix training on accelerate (REFERENCE.md, "Training").

From a text-to-image Stable Diffusion folder: widen the UNet's conv_in to 8 channels, freeze the
VAE and text encoder, and train the UNet to predict the noise (MSE) of
``z_t = add_noise(scale * E(edited).sample(), eps, t)`` given ``[z_t, E(input).mode()]`` on channels
and the instruction's text embedding, with the paper's conditioning dropout. Data order and all
randomness are functions of (seed, step) (``ip2p.train.samples``), so resuming is exact.
One process or many (``accelerate launch``); the result is a diffusers
``StableDiffusionInstructPix2PixPipeline`` folder (``ip2p.train.export``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ip2p.text import encode_prompts
from ip2p.train.conditioning import apply_conditioning_dropout
from ip2p.train.checkpoints import CHECKPOINT_DIR, STATE_FILE, checkpoint_dirs, find_resume  # noqa: F401
from ip2p.train.config import TIMESTEP_SAMPLING, TrainConfig
from ip2p.train.ema import EMA
from ip2p.train.samples import StepBatches, TrainSamples
from ip2p.train.unet_init import widen_conv_in

log = logging.getLogger("ip2p.train")


def load_base(base: str):
    """(tokenizer, text_encoder, vae, unet, noise_scheduler) of the base model, through the loading
    layer (``ip2p.models``, kind "any": a text-to-image model or an InstructPix2Pix to train on)."""
    from ip2p.models import load_components, training_scheduler

    c = load_components(base, kind="any")
    return c.tokenizer, c.text_encoder, c.vae, c.unet, training_scheduler(c)


def make_lr_scheduler(optimizer, cfg: TrainConfig):
    """The lr schedule of ``cfg``: linear warm-up over ``lr_warmup_steps``, then constant (the paper)
    or a cosine / linear decay reaching 0 at ``max_steps`` (stepped once per optimiser step)."""
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=cfg.max_steps)


def instruct_pix2pix_loss(unet, vae, noise_scheduler, batch: dict, text_embeddings: torch.Tensor,
                          null_text_embedding: torch.Tensor, cond_dropout: float, weight_dtype,
                          snr_gamma: float | None = None, timestep_sampling: str = "uniform") -> torch.Tensor:
    """The training loss of one micro-batch (mean over its samples).

    ``snr_gamma=None`` is the paper's plain MSE. A number applies Min-SNR weighting (Hang et al.
    2023): each sample's MSE times ``min(SNR_t, gamma) / SNR_t`` for epsilon prediction (``/ (SNR_t
    + 1)`` for v), with ``SNR_t = alpha_bar_t / (1 - alpha_bar_t)``; it stops the nearly-clean
    timesteps, whose targets the image condition cannot tell, from dominating the gradient.
    """
    device = text_embeddings.device
    with torch.no_grad():
        pixels = torch.cat([batch["edited"], batch["input"]]).to(device, weight_dtype)
        posterior = vae.encode(pixels).latent_dist
        n = batch["edited"].shape[0]
        eps = batch["posterior_eps"].to(device, posterior.mean.dtype)
        # target latent: scale * posterior.sample(), with the sample's own noise
        latents = (posterior.mean[:n] + posterior.std[:n] * eps).float() * vae.config.scaling_factor
        # condition latent: posterior mode, not scaled
        image_latents = posterior.mode()[n:].float()
    timesteps = training_timesteps(batch["t_unit"].to(device), noise_scheduler.config.num_train_timesteps,
                                   timestep_sampling)
    noise = batch["noise"].to(device, torch.float32)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    text, image_latents = apply_conditioning_dropout(text_embeddings.float(), null_text_embedding.float(),
                                                     image_latents, batch["r"], cond_dropout)
    pred = unet(torch.cat([noisy, image_latents], dim=1), timesteps, text).sample
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    elif noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {noise_scheduler.config.prediction_type!r}")
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, snr_gamma)).mean()


def training_timesteps(u: torch.Tensor, num_train_timesteps: int, sampling: str = "uniform") -> torch.Tensor:
    """Training timesteps from uniform draws ``u`` in [0, 1).

    "uniform" (the paper): ``floor(u * T)``. "cubic" (T2I-Adapter's non-uniform sampling):
    ``floor((1 - u^3) * T)``, which puts about half the samples above 0.9 T, where the sample's layout
    is decided and the image condition matters most.
    """
    if sampling == "uniform":
        f = u
    elif sampling == "cubic":
        f = 1 - u.double() ** 3
    else:
        raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, got {sampling!r}")
    return (f * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights of ``timesteps`` (float32, on their device)."""
    ac = noise_scheduler.alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]
    snr = ac / (1 - ac)
    clipped = snr.clamp(max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return (clipped / (snr + 1)).float()
    return (clipped / snr).float()


def _open_training_data(cfg: TrainConfig):
    from ip2p.data.registry import open_dataset

    return open_dataset(cfg.data, cfg.split, subset=cfg.subset, subset_seed=cfg.subset_seed,
                        clip_filter=cfg.clip_filter, on_bad_row=cfg.on_bad_row, verify_images=cfg.verify_images,
                        **cfg.data_options)


def _validation_examples(cfg: TrainConfig, train_ds) -> list:
    from ip2p.data.registry import open_dataset, resolve_spec

    if cfg.val_examples <= 0:
        return []
    if cfg.val_data:
        return list(open_dataset(cfg.val_data, subset=cfg.val_examples, on_bad_row="skip"))
    kind, _ = resolve_spec(cfg.data)
    if kind.splits is not None and "val" in kind.splits:
        opts = dict(cfg.data_options)
        if kind.name == "world":
            opts["n"] = cfg.val_examples
        spec = cfg.data if kind.name != "world" else "world"
        return list(open_dataset(spec, "val", subset=cfg.val_examples, on_bad_row="skip", **opts))[: cfg.val_examples]
    return list(train_ds)[: cfg.val_examples]


@dataclass
class _Run:
    """What the training loop works with, built once by ``train``: the accelerator, the frozen parts
    (in the mixed-precision dtype), the UNet as prepared by accelerate (``unet``) and unwrapped
    (``trained``), the optimiser, lr schedule and EMA, and the empty instruction's embedding."""
    cfg: TrainConfig
    accelerator: Any
    tokenizer: Any
    text_encoder: Any
    vae: Any
    noise_scheduler: Any
    weight_dtype: torch.dtype
    frozen_hashes: dict
    unet: Any = None
    trained: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    ema: EMA | None = None
    null_text: torch.Tensor | None = None
    base_in_channels: int = 4  # the base UNet's input channels (8: an InstructPix2Pix base, not widened)


def _make_accelerator(cfg: TrainConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    return Accelerator(
        mixed_precision=cfg.mixed_precision, cpu=cfg.cpu,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def _load_models(cfg: TrainConfig, accelerator) -> tuple[_Run, torch.nn.Module]:
    """The base model's parts: the frozen VAE and text encoder on the device in the mixed-precision
    dtype (their hashes kept: export checks the base did not change meanwhile), and the UNet widened
    to 8 input channels, in training mode (returned apart, not yet prepared)."""
    from ip2p.util.hashing import hash_state_dict

    tokenizer, text_encoder, vae, unet, noise_scheduler = load_base(cfg.base)
    frozen_hashes = {"vae": hash_state_dict(vae), "text_encoder": hash_state_dict(text_encoder)}
    base_in_channels = int(unet.conv_in.in_channels)
    widen_conv_in(unet, 8)
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[accelerator.mixed_precision]
    for frozen in (vae, text_encoder):  # the frozen parts run in the mixed-precision dtype
        frozen.to(accelerator.device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    run = _Run(cfg, accelerator, tokenizer, text_encoder, vae, noise_scheduler, weight_dtype, frozen_hashes,
               base_in_channels=base_in_channels)
    return run, unet


def _prepare_optimisation(run: _Run, unet) -> None:
    """AdamW over the UNet, its lr schedule and the optional EMA, prepared and registered with the
    accelerator so that ``save_state`` / ``load_state`` carry them."""
    cfg, accelerator = run.cfg, run.accelerator
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    run.lr_scheduler = make_lr_scheduler(optimizer, cfg)
    # the lr schedule is not prepared: accelerate would step it once per process, and warm-up is
    # counted in optimiser steps here; it is checkpointed like the rest
    run.unet, run.optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(run.lr_scheduler)
    run.trained = accelerator.unwrap_model(run.unet)
    run.ema = EMA(run.trained.parameters(), cfg.ema_max_decay) if cfg.ema else None
    if run.ema is not None:
        accelerator.register_for_checkpointing(run.ema)


def _resume(cfg: TrainConfig, accelerator) -> int | None:
    """Load the latest checkpoint if there is one to resume from; its step, or None."""
    resume_from = find_resume(cfg)
    if resume_from is None:
        return None
    state = json.loads((resume_from / STATE_FILE).read_text())
    accelerator.load_state(str(resume_from))
    start_step = int(state["step"])
    if accelerator.is_main_process:
        log.info("resumed from %s at step %d", resume_from, start_step)
        if state.get("seed") != cfg.seed or state.get("global_batch") != _global_batch(cfg, accelerator):
            log.warning("resuming with a different seed or global batch than the checkpoint was made with "
                        "(%s): the data order will differ from an uninterrupted run", state)
    return start_step


def _start_tracking(cfg: TrainConfig, accelerator, out: Path, dataset) -> None:
    """The experiment tracker (if any) and, on the main process, the run's own files."""
    from ip2p.train.export import write_run_files

    if cfg.report_to != "none":
        accelerator.init_trackers("ip2p-train", config={k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                                                          for k, v in cfg.to_dict().items()})
    if accelerator.is_main_process:
        write_run_files(out, cfg, dataset, extra={"world_size": accelerator.num_processes})


def _step_batches(run: _Run, samples: TrainSamples, start_step: int):
    """An iterator over the micro-batches of the steps from ``start_step`` on, this process's share."""
    cfg, accelerator = run.cfg, run.accelerator
    loader = torch.utils.data.DataLoader(
        samples, num_workers=cfg.num_workers, persistent_workers=False,
        batch_sampler=StepBatches(start_step, cfg.max_steps, grad_accum=cfg.grad_accum,
                                  world_size=accelerator.num_processes, rank=accelerator.process_index,
                                  batch_size=cfg.batch_size))
    return iter(loader)


def _optimiser_step(run: _Run, batches) -> float:
    """One optimiser step over ``grad_accum`` micro-batches (gradients synchronised on the last);
    returns the step's loss (mean over its micro-batches, this process)."""
    cfg, accelerator = run.cfg, run.accelerator
    step_loss = 0.0
    for micro in range(cfg.grad_accum):
        batch = next(batches)
        sync = micro == cfg.grad_accum - 1 or accelerator.num_processes == 1
        ctx = contextlib.nullcontext() if sync else accelerator.no_sync(run.unet)
        with ctx:
            with torch.no_grad():
                text = encode_prompts(run.tokenizer, run.text_encoder, list(batch["instruction"]), accelerator.device)
            loss = instruct_pix2pix_loss(run.unet, run.vae, run.noise_scheduler, batch, text, run.null_text,
                                         cfg.cond_dropout, run.weight_dtype,
                                         snr_gamma=cfg.snr_gamma, timestep_sampling=cfg.timestep_sampling)
            accelerator.backward(loss / cfg.grad_accum)
        step_loss += loss.detach().item() / cfg.grad_accum
    if cfg.max_grad_norm:
        accelerator.clip_grad_norm_(run.unet.parameters(), cfg.max_grad_norm)
    run.optimizer.step()
    if not accelerator.optimizer_step_was_skipped:
        run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None and not accelerator.optimizer_step_was_skipped:
        run.ema.step(run.trained.parameters())
    return step_loss


class _LossLog:
    """The mean loss since the last log line, reduced over processes every ``log_every`` steps."""

    def __init__(self, run: _Run, progress):
        self.run, self.progress = run, progress
        self.loss_sum, self.loss_count, self.t0 = 0.0, 0, time.time()

    def add(self, step: int, step_loss: float) -> None:
        if not math.isfinite(step_loss):
            from ip2p.errors import NonFiniteOutputError

            raise NonFiniteOutputError(f"training loss is {step_loss} at step {step}; lower the lr or use bf16/fp32")
        self.loss_sum += step_loss
        self.loss_count += 1
        cfg, accelerator = self.run.cfg, self.run.accelerator
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            mean_loss = accelerator.reduce(torch.tensor(self.loss_sum / self.loss_count, device=accelerator.device),
                                           "mean").item()
            logs = {"loss": mean_loss, "lr": self.run.lr_scheduler.get_last_lr()[0],
                    "steps_per_s": self.loss_count / max(time.time() - self.t0, 1e-9)}
            self.progress.set_postfix(loss=f"{mean_loss:.4f}")
            if cfg.report_to != "none":
                accelerator.log(logs, step=step)
            self.loss_sum, self.loss_count, self.t0 = 0.0, 0, time.time()


def _time_is_up(run: _Run, step: int, t_start: float) -> bool:
    """Whether any process is past the time limit (so that every process stops at the same step)."""
    cfg, accelerator = run.cfg, run.accelerator
    if cfg.time_limit_minutes is None:
        return False
    over = torch.tensor(float(time.time() - t_start > 60 * cfg.time_limit_minutes), device=accelerator.device)
    if accelerator.reduce(over, "sum").item() > 0:
        if accelerator.is_main_process:
            log.info("time limit of %s min reached at step %d; saving and exporting", cfg.time_limit_minutes, step)
        return True
    return False


def _validate(run: _Run, step: int, val_examples: list) -> None:
    from ip2p.train.validation import run_validation

    run_validation(run.accelerator, run.cfg, step, run.trained, run.ema, run.vae, run.text_encoder, run.tokenizer,
                   run.noise_scheduler, val_examples, run.weight_dtype)


def _training_loop(run: _Run, samples: TrainSamples, val_examples: list, start_step: int | None) -> int:
    """Optimiser steps from the resumed step (or 0) to ``max_steps`` (or ``stop_at_step``) or the time
    limit, with logging, checkpoints and validation on their schedules; a last checkpoint at the step
    reached, returned."""
    from tqdm.auto import tqdm

    cfg, main = run.cfg, run.accelerator.is_main_process
    step = start_step or 0
    batches = _step_batches(run, samples, step)
    progress = tqdm(total=cfg.max_steps, initial=step, disable=not (main and cfg.progress), desc="train", dynamic_ncols=True)
    losses = _LossLog(run, progress)
    t_start = losses.t0
    last_saved = step if start_step is not None else -1
    end = cfg.max_steps if cfg.stop_at_step is None else cfg.stop_at_step
    while step < end:
        step_loss = _optimiser_step(run, batches)
        step += 1
        progress.update(1)
        losses.add(step, step_loss)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_checkpoint(run.accelerator, cfg, step)
            last_saved = step
        if cfg.validate_every and step % cfg.validate_every == 0 and val_examples and main:
            _validate(run, step, val_examples)
        if _time_is_up(run, step, t_start):
            break
    progress.close()
    if last_saved != step:
        save_checkpoint(run.accelerator, cfg, step)
    return step


def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns the output folder (a diffusers InstructPix2Pix pipeline)."""
    from ip2p.train.export import export_pipeline

    cfg.validate()
    out = Path(cfg.out)
    accelerator = _make_accelerator(cfg, out)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    dataset = _open_training_data(cfg)  # first: a bad data spec fails before any model loads
    if main:
        log.info("training data: %s", dataset.describe())
    run, unet = _load_models(cfg, accelerator)
    val_examples = _validation_examples(cfg, dataset) if main else []
    latent_factor = 2 ** (len(run.vae.config.block_out_channels) - 1)
    samples = TrainSamples(dataset, seed=cfg.seed, resolution=cfg.resolution, latent_channels=run.vae.config.latent_channels,
                           latent_factor=latent_factor, flip=cfg.flip, on_bad_row=cfg.on_bad_row)
    _prepare_optimisation(run, unet)
    start_step = _resume(cfg, accelerator)
    _start_tracking(cfg, accelerator, out, dataset)
    with torch.no_grad():
        run.null_text = encode_prompts(run.tokenizer, run.text_encoder, [""], accelerator.device)

    step = _training_loop(run, samples, val_examples, start_step)
    accelerator.wait_for_everyone()
    if main:
        if val_examples and (not cfg.validate_every or step % cfg.validate_every != 0):
            _validate(run, step, val_examples)
        export_pipeline(out, cfg, run.trained, run.ema, run.noise_scheduler, step=step, frozen_hashes=run.frozen_hashes,
                        base_in_channels=run.base_in_channels)
        if dataset.bad_rows.rows or samples.bad.rows:
            log.warning("bad rows: reader %s; during training %s", dataset.bad_rows.summary(), samples.bad.summary())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _global_batch(cfg: TrainConfig, accelerator) -> int:
    return cfg.batch_size * cfg.grad_accum * accelerator.num_processes


def save_checkpoint(accelerator, cfg: TrainConfig, step: int) -> Path:
    """``accelerator.save_state`` (model, optimiser, lr schedule, EMA, RNG) plus the step: the data
    position is a function of the step, so nothing else is needed to resume exactly."""
    from ip2p.util.io import atomic_write_json

    path = Path(cfg.out) / CHECKPOINT_DIR / f"step-{step:08d}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(path / STATE_FILE, {"step": step, "seed": cfg.seed, "global_batch": _global_batch(cfg, accelerator),
                                              "world_size": accelerator.num_processes})
        if cfg.checkpoints_keep:
            for old in checkpoint_dirs(cfg.out)[: -cfg.checkpoints_keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path
