"""Model cards of the world's shipped models: README.md beside each model's weights.

A card is written from the recipe's run record (``training.json``: command, configuration, wall
time, hardware) plus the files on disk (sizes, parameter counts) and sanity figures measured on the
test split by ``ip2p.world.evaluate``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ip2p.util.io import atomic_write_json, atomic_write_text
from ip2p.world.recipe import SD_DIR, WEIGHTS_DIR, load_record


def _sizes(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")
                  if p.is_file() and p.name not in ("README.md",))


def _fmt_sizes(folder: Path) -> str:
    rows = [f"| `{name}` | {size / 2**20:.2f} MiB |" for name, size in _sizes(folder) if size > 2048]
    total = sum(s for _, s in _sizes(folder))
    return "| file | size |\n|---|---|\n" + "\n".join(rows) + f"\n| **all files** | **{total / 2**20:.2f} MiB** |"


def _fmt_record(rec: dict) -> str:
    if not rec:
        return "_no training record found_"
    cfg = rec.get("config", {})
    lines = [
        f"- recipe: `{rec.get('command', '?')}` (add `OMP_WAIT_POLICY=PASSIVE` on a shared CPU)",
        f"- steps: {cfg.get('steps')}, batch: {cfg.get('batch')}, lr: {cfg.get('lr')}, seed: {cfg.get('seed')}",
        f"- wall time: {rec.get('wall_time_s', 0) / 60:.1f} min on {rec.get('hardware', '?')}"
        " (a 2-core CPU shared with other jobs)",
    ]
    if "parameters" in rec:
        lines.append(f"- parameters: {rec['parameters']}")
    if "final_loss" in rec:
        lines.append(f"- final training loss (mean of the last steps): {rec['final_loss']:.4f}")
    if "scaling_factor" in rec:
        lines.append(f"- latent scaling_factor (1/std of latents on training scenes): {rec['scaling_factor']}")
    return "\n".join(lines)


def _fmt_figures(fig: dict) -> str:
    return "\n".join(f"| {k} | {v} |" for k, v in fig.items())


def render_card(title: str, intro: str, sections: list[tuple[str, str]]) -> str:
    """The one layout of every world model card: a title, an introduction, then titled sections."""
    body = "".join(f"\n## {head}\n{text.strip()}\n" for head, text in sections)
    return f"# {title}\n\n{intro.strip()}\n{body}"


def write_card(folder: Path, text: str) -> Path:
    """The one writer of the cards: ``README.md`` beside the weights, atomically."""
    return atomic_write_text(Path(folder) / "README.md", text)


def _card(title: str, what: str, folder: Path, rec: dict, figures: dict, extra: str = "") -> Path:
    sections = [("Training", _fmt_record(rec) + "\n\nConfiguration: see `training.json` beside this card."),
                ("Sanity figures (test split, recomputed by `ip2p world cards`)",
                 "| figure | value |\n|---|---|\n" + _fmt_figures(figures)),
                ("Files", _fmt_sizes(folder) + ("\n" + extra if extra else ""))]
    return write_card(folder, render_card(title, what, sections))


def write_cards(evaluate: bool = True) -> list[Path]:
    """Every card of the shipped world models (those whose files exist)."""
    return _vae_card(evaluate) + _sd_card(evaluate) + _clip_cards(evaluate)


def _vae_card(evaluate: bool) -> list[Path]:
    from ip2p.world import evaluate as ev

    written = []
    vae_dir = SD_DIR / "vae"
    if (vae_dir / "config.json").exists():
        rec = load_record(vae_dir)
        fig = ev.evaluate_vae(vae_dir) if evaluate else rec.get("figures", {})
        rec["figures"] = fig
        atomic_write_json(vae_dir / "training.json", rec)
        rt = rec.get("roundtrip_test_targets") or {}
        cfg = rec.get("config", {})
        phases = sorted(p.name for p in vae_dir.glob("training-phase*.json"))
        written.append(_card(
            "world:sd / vae -- the world's AutoencoderKL", "diffusers `AutoencoderKL`: 64x64x3 images in [-1, 1] <-> "
            "16x16x4 latents. Loads with `AutoencoderKL.from_pretrained(path)`. Recipe `ip2p world train-vae` "
            "(`ip2p/world/vae_recipe.py`): trained from scratch on half caption scenes, half training-edit inputs and "
            "targets (empty scenes, puddles, night, grown shapes), L1 + MSE with every pixel that differs from the "
            f"scene's background weighted {cfg.get('foreground_weight')}x, decoded from posterior means plus Gaussian "
            f"noise of std {cfg.get('latent_noise')} (not samples of a learned posterior), cosine lr, bfloat16 autocast, "
            f"in {len(phases) + 1} phase(s), each from the previous phase's last checkpoint (records: "
            f"{', '.join(phases + ['training.json'])}); then scaling_factor = 1/std of latent samples and the "
            f"encoder's log-variance bias shifted by {cfg.get('posterior_logvar_shift')} (posterior std "
            f"{rec.get('posterior_std_before')} -> {rec.get('posterior_std_after')}, unscaled), so that, as SD's, the "
            "posterior is nearly deterministic and InstructPix2Pix's target scale * posterior.sample() carries no "
            "unpredictable noise. Round-trip L1 "
            f"(posterior mode) of {rt.get('n')} test-split edit targets: {rt.get('l1_mean')} overall; per category "
            f"{rt.get('l1_by_category')}. Figures below: PSNR of 64 test caption scenes and the round trip of 192 "
            "test targets.",
            vae_dir, rec, fig))
    return written


def _sd_card(evaluate: bool) -> list[Path]:
    from ip2p.world import evaluate as ev

    written = []
    unet_dir = SD_DIR / "unet"
    clip_dir = WEIGHTS_DIR / "clip"
    if (unet_dir / "config.json").exists():
        rec = load_record(unet_dir)
        fig = rec.get("figures", {})
        if evaluate and (clip_dir / "open_clip_config.json").exists():
            fig = ev.evaluate_sd(SD_DIR, clip_dir)
        rec["figures"] = fig
        atomic_write_json(unet_dir / "training.json", rec)
        tok = json.loads((SD_DIR / "tokenizer" / "tokenizer_config.json").read_text())
        cfg = rec.get("config", {})
        what = ("The world's \"Stable Diffusion\": a standard diffusers `StableDiffusionPipeline` folder "
                "(`StableDiffusionPipeline.from_pretrained(path)`, offline) with the world VAE (`vae/`), a "
                "`CLIPTokenizer` whose vocab.json/merges.txt are generated from the world's words "
                f"(`ip2p world build-tokenizer`; model_max_length {tok.get('model_max_length')}; "
                "`<|startoftext|>`/`<|endoftext|>` at the two highest ids), a `CLIPTextModel` and a 4-channel "
                "`UNet2DConditionModel` (16x16 latents) trained together from scratch on world captions with "
                f"{cfg.get('caption_dropout', 0.1):.0%} caption dropout, and a DDIM scheduler on SD's noise schedule "
                "(1000 steps, scaled_linear 0.00085..0.012, epsilon; not SD's PNDM, whose 20-step samples of "
                "this model are textured: `ip2p.world.sd_recipe.build_scheduler`). The UNet and text encoder weights are the EMA weights."
                + (f" The text encoder also learns that two phrasings of one caption or instruction mean the same (a "
                   f"contrastive paraphrase term, weight {cfg['paraphrase_weight']}, on phrasings from every template, "
                   "held-out ones included): the world's stand-in for a real text encoder's web pretraining."
                   if cfg.get("paraphrase_weight") else "")
                + f" Recipe: `ip2p world train-sd` (`ip2p/world/sd_recipe.py`), {cfg.get('steps')} steps, batch "
                f"{cfg.get('batch')}, lr {cfg.get('lr')}." + "\n\nFigures: text-to-image "
                "samples (DDIM, 20 steps, guidance 7.5) for test captions, scored by the metric CLIP "
                "(`world:clip`) against their own captions and against shuffled captions.")
        written.append(_card("world:sd -- text-to-image pipeline of the small world", what, SD_DIR, rec, fig))
    return written


def _clip_cards(evaluate: bool) -> list[Path]:
    from ip2p.world import evaluate as ev

    written = []
    for name, which in (("clip", "metric"), ("clip-guide", "guide")):
        folder = WEIGHTS_DIR / name
        if not (folder / "open_clip_config.json").exists():
            continue
        rec = load_record(folder)
        fig = ev.evaluate_clip(folder) if evaluate else rec.get("figures", {})
        rec["figures"] = fig
        atomic_write_json(folder / "training.json", rec)
        role = "image-text similarity metrics" if which == "metric" else "the Text2Live-style guide (never for metrics)"
        what = (f"An `open_clip.CLIP` (ViT, 64x64 input, patch 8) for {role}, trained contrastively on world "
                "scenes and captions (a random phrasing each time). Format: `open_clip_config.json` "
                "(`model_cfg`, `preprocess_cfg`) + `open_clip_model.safetensors`; the text tower uses the world "
                "tokenizer at `../sd/tokenizer` (relative to this folder). Figures: image->caption retrieval top-1 "
                "among 64 test captions; zero-shot colour/shape accuracy on single-shape test scenes, choosing "
                "among captions that differ only in that attribute.")
        written.append(_card(f"world:{name} -- CLIP for {which}", what, folder, rec, fig))
    return written
