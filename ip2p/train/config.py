"""The training configuration: every knob of ``ip2p train``, with the paper's defaults where it
has one (REFERENCE.md, "Training"), written as ``training_config.json`` beside the weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


TIMESTEP_SAMPLING = ("uniform", "cubic")  # see ip2p.train.trainer.training_timesteps
# diffusers.optimization schedules, all after a linear warm-up; constant is the paper's
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    base: str  # text-to-image diffusers folder, hub id, or world:<name>
    data: str  # dataset spec for ip2p.data.open_dataset (e.g. official:/d, world:train)
    out: str  # output folder: the InstructPix2Pix pipeline, plus checkpoints/, logs/, validation/
    split: str | None = None  # None: the dataset kind's default (train for official and world)
    data_options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {"n": 20000}
    subset: int | float | str | None = None  # a count or a fraction of the training rows
    subset_seed: int = 0
    clip_filter: dict[str, Any] | None = None  # ClipFilter thresholds; None = no filter
    on_bad_row: str = "raise"  # or "skip"
    verify_images: bool = True  # decode every training image once before training

    max_steps: int = 1000  # optimiser steps
    batch_size: int = 4  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-4  # the paper: AdamW 1e-4 constant
    lr_warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant (the paper) | cosine | linear: decay to 0 at max_steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    resolution: int = 256
    flip: bool = True
    cond_dropout: float = 0.05
    snr_gamma: float | None = None  # None: plain MSE (the paper); a number: Min-SNR-gamma weighting
    timestep_sampling: str = "uniform"  # uniform (the paper) | cubic (T2I-Adapter: more weight on t near T)
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    ema: bool = True
    ema_max_decay: float = 0.9999
    seed: int = 0
    num_workers: int = 0

    checkpoint_every: int = 500  # 0: only the final checkpoint
    checkpoints_keep: int | None = None  # keep the newest N checkpoints (None: all)
    resume: str | None = None  # "latest" or a checkpoint folder
    log_every: int = 10
    report_to: str = "tensorboard"  # tensorboard | none
    progress: bool = True

    validate_every: int = 0  # 0: only at the end (when val_examples > 0)
    val_data: str | None = None  # default: the dataset's val split if it has one, else training rows
    val_examples: int = 4
    val_steps: int = 20
    val_image_guidance: float = 1.5
    val_text_guidance: float = 7.5

    cpu: bool = False  # force CPU even when a GPU is visible
    # stop at the first step after this many minutes of training (then checkpoint and export as
    # usual); with the constant schedule the result equals a run with max_steps = the step reached
    # (a decaying schedule is a function of max_steps, so there it does not)
    time_limit_minutes: float | None = None
    # stop (checkpoint, export) after this step, with every schedule still a function of max_steps:
    # the weights equal those of a max_steps run stopped there (a staged recipe records such a stage)
    stop_at_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        from ip2p.errors import SpecError

        checks = [
            (self.max_steps >= 1, "max_steps", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.grad_accum >= 1, "grad_accum", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}"),
            (self.resolution >= 8 and self.resolution % 8 == 0, "resolution", "must be a multiple of 8"),
            (self.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision", "must be no, fp16 or bf16"),
            (self.on_bad_row in ("raise", "skip"), "on_bad_row", "must be raise or skip"),
            (0 <= self.cond_dropout <= 1 / 3, "cond_dropout", "must be in [0, 1/3]"),
            (self.timestep_sampling in TIMESTEP_SAMPLING, "timestep_sampling", f"must be one of {TIMESTEP_SAMPLING}"),
            (self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma", "must be > 0 (or unset)"),
            (self.report_to in ("tensorboard", "none"), "report_to", "must be tensorboard or none"),
            (self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0"),
            (self.stop_at_step is None or 1 <= self.stop_at_step <= self.max_steps, "stop_at_step",
             f"must be in [1, max_steps={self.max_steps}] (or unset)"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise SpecError(f"training option {name}={getattr(self, name)!r}: {problem}")
        self.check_resume()

    def check_resume(self) -> None:
        """Refuse to resume from a checkpoint past ``max_steps``: the trainer would export the
        checkpoint's step while this configuration (and its training_config.json) says
        ``max_steps``. Equal steps are allowed (nothing to train; the checkpoint is exported)."""
        from ip2p.errors import SpecError

        if not self.resume:
            return
        import json

        from ip2p.train.checkpoints import STATE_FILE, find_resume

        ckpt = find_resume(self)
        if ckpt is None:
            return
        try:
            step = int(json.loads((ckpt / STATE_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpecError(f"resume={self.resume!r}: cannot read the step of checkpoint {ckpt} ({e})") from None
        if step > self.max_steps:
            raise SpecError(f"--steps {self.max_steps}: below the step of the checkpoint to resume ({ckpt}, step "
                            f"{step}); pass --steps {step} or more, or resume from an earlier checkpoint")


def lr_schedule_text(cfg: dict) -> str:
    """The lr schedule of a configuration (``TrainConfig.to_dict()`` or a stored run's "config"), in words."""
    if cfg.get("lr_schedule", "constant") == "constant":
        return f"constant after {cfg['lr_warmup_steps']} warm-up steps"
    return f"{cfg['lr_schedule']} decay to 0 at step {cfg['max_steps']} after {cfg['lr_warmup_steps']} warm-up steps"


def loss_text(cfg: dict) -> str:
    """The training loss of a configuration, in words."""
    return f"Min-SNR-{cfg['snr_gamma']} weighted eps MSE" if cfg.get("snr_gamma") else "eps MSE"

