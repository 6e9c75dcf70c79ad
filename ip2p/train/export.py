"""The trainer's output folder: a diffusers ``StableDiffusionInstructPix2PixPipeline`` (UNet with
8 input channels; the EMA weights when EMA is on, as the paper's ``extract_ema``), the base model's
VAE, text encoder and tokenizer, an Euler-ancestral scheduler over the training betas, no safety
checker; plus ``training_config.json`` and a model card stub ``README.md``.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ip2p.train.config import TrainConfig, loss_text, lr_schedule_text

PIPELINE_ENTRIES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
_STARTED = time.time()


def _versions() -> dict:
    import accelerate
    import diffusers
    import transformers

    import ip2p

    return {"ip2p": ip2p.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"


def write_run_files(out: Path, cfg: TrainConfig, dataset, extra: dict | None = None) -> None:
    """``training_config.json`` at the start of a run (updated by ``export_pipeline`` at the end)."""
    from ip2p.util.io import atomic_write_json

    atomic_write_json(out / "training_config.json", {
        "config": cfg.to_dict(), "dataset": dataset.describe(), "dataset_size": len(dataset),
        "bad_rows": dataset.bad_rows.counts(), "versions": _versions(), "hardware": hardware(), **(extra or {})})


def export_pipeline(out: str | Path, cfg: TrainConfig, trained_unet, ema, noise_scheduler, *, step: int,
                    frozen_hashes: dict | None = None, base_in_channels: int = 4) -> Path:
    """Write the pipeline into ``out`` (each component replaced by rename, so no half-written folder).

    The VAE, text encoder and tokenizer are re-read from the base; ``frozen_hashes`` (weights hashes
    taken when training started) detect a base that changed during training: then a warning is
    logged and ``training_config.json`` records ``base_changed_during_training``.
    """
    import logging

    from ip2p.util.hashing import hash_state_dict

    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from ip2p.models import load_components
    from ip2p.train.validation import unet_copy
    from ip2p.util.io import atomic_write_json, atomic_write_text, swap_in_dir

    out = Path(out)
    unet = unet_copy(trained_unet, ema, "cpu", torch.float32)
    base = load_components(cfg.base, kind="any")  # fresh fp32 copies of the frozen parts
    tokenizer, text_encoder, vae = base.tokenizer, base.text_encoder, base.vae
    changed = []
    if frozen_hashes:
        now = {"vae": hash_state_dict(vae), "text_encoder": hash_state_dict(text_encoder)}
        changed = sorted(k for k in frozen_hashes if frozen_hashes[k] != now.get(k))
        if changed:
            logging.getLogger("ip2p.train").warning(
                "the base model's %s changed on disk during training (%s); the exported folder holds the new "
                "one, which the UNet was not trained with", ", ".join(changed), cfg.base)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name in PIPELINE_ENTRIES:
            src, dst = tmp / name, out / name
            if not src.exists():
                continue
            if src.is_dir():
                swap_in_dir(src, dst)  # each part: the old folder or the new one, never neither
            else:
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cfg_path = out / "training_config.json"
    run = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {"config": cfg.to_dict()}
    run.update({"final_step": step, "ema_weights_exported": bool(ema is not None),
                "frozen_weights_hashes": frozen_hashes, "base_changed_during_training": changed,
                "ema_updates": None if ema is None else ema.num_updates,
                "wall_time_s_this_process": round(time.time() - _STARTED, 1), "base_unet_in_channels": base_in_channels})
    atomic_write_json(cfg_path, run)
    card = out / "README.md"
    if not card.exists() or _is_unmeasured_stub(card.read_text(errors="replace")):
        # A run resumed after a time limit exports again: its stub must say the step it reached now.
        # A card someone measured or wrote is theirs and stays.
        atomic_write_text(card, model_card(cfg, step, ema is not None, base_in_channels))
    return out


_CARD_HEAD = "# InstructPix2Pix model (trained with `ip2p train`)"
_CARD_UNMEASURED = "## Evaluation\n\nNot measured yet.\n"


def _is_unmeasured_stub(text: str) -> bool:
    """True for a card ``model_card`` wrote and nothing measured since (safe to rewrite)."""
    return text.startswith(_CARD_HEAD) and text.endswith(_CARD_UNMEASURED)


def model_card(cfg: TrainConfig, step: int, ema: bool, base_in_channels: int = 4) -> str:
    g = cfg.batch_size * cfg.grad_accum
    base = ("UNet conv_in widened to 8 channels (new channels zero, bias copied)" if base_in_channels != 8 else
            "an InstructPix2Pix UNet (8 input channels), trained on from its weights")
    stop = f" (stopped at step {cfg.stop_at_step})" if cfg.stop_at_step else ""
    return f"""{_CARD_HEAD}

A diffusers `StableDiffusionInstructPix2PixPipeline` folder (no safety checker). Load it with
`StableDiffusionInstructPix2PixPipeline.from_pretrained(folder)` or `ip2p.load_editor(folder)`.

- Base: `{cfg.base}`; {base}.
- Data: `{cfg.data}` (split {cfg.split or 'default'}, subset {cfg.subset}, CLIP filter {cfg.clip_filter}).
- Steps: {step} of a {cfg.max_steps}-step run{stop}; batch {cfg.batch_size} per process x accumulation {cfg.grad_accum} (= {g} per process);
  lr {cfg.lr} (AdamW, {lr_schedule_text(cfg.to_dict())}); resolution {cfg.resolution};
  timesteps {cfg.timestep_sampling}; loss {loss_text(cfg.to_dict())};
  conditioning dropout {cfg.cond_dropout}; precision {cfg.mixed_precision}; seed {cfg.seed}.
- Weights: {'the EMA weights (decay min(' + str(cfg.ema_max_decay) + ', (1+n)/(10+n)))' if ema else 'the trained weights (no EMA)'}.
- Full configuration: `training_config.json`; validation grids: `validation/`; logs: `logs/`.

{_CARD_UNMEASURED}"""
