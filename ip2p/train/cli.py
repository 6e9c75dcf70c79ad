"""The ``ip2p train`` command: InstructPix2Pix training from a text-to-image model.

Single process: ``ip2p train --base world:sd --data world:train --out runs/w``.
Several GPUs or nodes: ``accelerate launch [--num_processes N ...] -m ip2p.cli train ...``.
"""
from __future__ import annotations

import logging
from typing import Optional

import typer


def _parse_options(items: list[str]) -> dict:
    """``key=value`` pairs; values parsed as int, float or kept as text."""
    from ip2p.errors import SpecError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--data-option {item!r}: expected key=value (e.g. n=20000)")
        for conv in (int, float):
            try:
                out[key] = conv(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def train_command(
    base: str = typer.Option(..., help="Text-to-image diffusers folder, hub id, or world:<name> (e.g. world:sd)."),
    data: str = typer.Option(..., help="Dataset: official:<root>, parquet:<file|folder>, jsonl:<manifest>, world:<split>, or a path."),
    out: str = typer.Option(..., help="Output folder: the InstructPix2Pix pipeline, checkpoints/, logs/, validation/."),
    split: Optional[str] = typer.Option(None, help="Dataset split (default: the kind's default, train for official/world)."),
    data_option: list[str] = typer.Option([], "--data-option", help="Reader option key=value, repeatable (e.g. n=20000 for world)."),
    subset: Optional[str] = typer.Option(None, help="Deterministic subset: a count (5000) or a fraction (0.1 or 10%)."),
    subset_seed: int = typer.Option(0, help="Seed of the subset choice."),
    clip_filter: bool = typer.Option(False, "--clip-filter/--no-clip-filter", help="Apply the paper's CLIP filter from metadata."),
    min_clip_image: float = typer.Option(0.75, help="CLIP filter: min image-image similarity."),
    min_clip_direction: float = typer.Option(0.2, help="CLIP filter: min directional similarity."),
    min_clip_sim_0: float = typer.Option(0.2, help="CLIP filter: min input image / input caption similarity."),
    min_clip_sim_1: float = typer.Option(0.2, help="CLIP filter: min edited image / output caption similarity."),
    max_per_prompt: int = typer.Option(4, help="CLIP filter: keep at most this many pairs per prompt (best directional)."),
    on_bad_row: str = typer.Option("raise", help="raise: stop at a bad row; skip: log it, count it, go on."),
    verify_images: bool = typer.Option(True, "--verify-images/--no-verify-images", help="Decode every image once before training."),
    max_steps: int = typer.Option(1000, "--steps", "--max-steps", help="Optimiser steps."),
    batch_size: int = typer.Option(4, help="Batch per process and micro-step."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation micro-steps."),
    lr: float = typer.Option(1e-4, help="AdamW learning rate (peak, after warm-up)."),
    lr_warmup_steps: int = typer.Option(0, help="Linear warm-up steps."),
    lr_schedule: str = typer.Option("constant", help="constant (the paper) | cosine | linear: decay to 0 at --steps."),
    weight_decay: float = typer.Option(1e-2, help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping norm (0: off)."),
    resolution: int = typer.Option(256, help="Training crop size (pixels)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flip (p 0.5), same for both images."),
    cond_dropout: float = typer.Option(0.05, help="Conditioning dropout p (text: r<2p, image: p<=r<3p)."),
    snr_gamma: Optional[float] = typer.Option(None, help="Min-SNR-gamma loss weighting (e.g. 5); unset: plain MSE, as the paper."),
    timestep_sampling: str = typer.Option("uniform", help="uniform (the paper) | cubic: t = (1 - u^3) T, more samples at high noise."),
    mixed_precision: str = typer.Option("no", help="no | fp16 | bf16."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing/--no-gradient-checkpointing"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Keep an EMA of the weights; the exported weights are the EMA."),
    ema_max_decay: float = typer.Option(0.9999, help="EMA decay cap: min(cap, (1+n)/(10+n))."),
    seed: int = typer.Option(0, help="Seed of data order and all training randomness."),
    num_workers: int = typer.Option(0, help="DataLoader worker processes."),
    checkpoint_every: int = typer.Option(500, help="Save a resumable checkpoint every N steps (0: only at the end)."),
    checkpoints_keep: Optional[int] = typer.Option(None, help="Keep only the newest N checkpoints."),
    resume: Optional[str] = typer.Option(None, help="'latest' or a checkpoint folder."),
    log_every: int = typer.Option(10, help="Log the loss every N steps."),
    report_to: str = typer.Option("tensorboard", help="tensorboard | none."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    validate_every: int = typer.Option(0, help="Validation grid every N steps (0: only at the end)."),
    val_data: Optional[str] = typer.Option(None, help="Validation dataset spec (default: the data's val split, else training rows)."),
    val_examples: int = typer.Option(4, help="Examples in the validation grid (0: no validation)."),
    val_steps: int = typer.Option(20, help="Sampling steps for validation."),
    val_image_guidance: float = typer.Option(1.5, help="sI for validation."),
    val_text_guidance: float = typer.Option(7.5, help="sT for validation."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on CPU even when a GPU is visible."),
    time_limit_minutes: Optional[float] = typer.Option(None, help="Stop (checkpoint, export) at the first step after this many minutes."),
    stop_at_step: Optional[int] = typer.Option(None, help="Stop (checkpoint, export) after this step; the schedules stay those of --steps."),
) -> None:
    """Train an InstructPix2Pix model from a text-to-image model (accelerate; use `accelerate launch` for many GPUs)."""
    options = dict(locals())  # the command's options by name: nothing else is defined yet
    from ip2p.train.trainer import train

    _quiet_logging()
    cfg = _train_config(options)
    cfg.validate()  # every option, and a resume past --steps, before any data or model loads
    path = train(cfg)
    typer.echo(f"wrote {path}")


def _quiet_logging() -> None:
    """INFO lines from ip2p, only warnings from the libraries under it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "diffusers", "transformers", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _train_config(options: dict):
    """The ``TrainConfig`` of ``train_command``'s options: the ``--data-option`` pairs parsed, the CLIP
    filter's thresholds gathered (None without ``--clip-filter``), ``--max-grad-norm 0`` as no
    clipping; every other option is the config field of the same name."""
    from ip2p.train.config import TrainConfig

    options = dict(options)
    options["data_options"] = _parse_options(options.pop("data_option"))
    thresholds = {"min_image": options.pop("min_clip_image"), "min_direction": options.pop("min_clip_direction"),
                  "min_sim_0": options.pop("min_clip_sim_0"), "min_sim_1": options.pop("min_clip_sim_1"),
                  "max_per_prompt": options.pop("max_per_prompt")}
    options["clip_filter"] = thresholds if options["clip_filter"] else None
    options["max_grad_norm"] = options["max_grad_norm"] or None
    return TrainConfig(**options)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
