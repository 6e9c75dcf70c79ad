"""`ip2p world ...` commands: build the tokenizer, train the world's models, write cards and reports."""
from __future__ import annotations

from pathlib import Path

import typer

world_app = typer.Typer(no_args_is_help=True, help="The small world: scene generator, base-model recipes, cards.")


@world_app.command("build-tokenizer")
def build_tokenizer_cmd(out: Path = typer.Option(None, help="folder (default: the shipped sd/tokenizer)")) -> None:
    """Generate vocab.json + merges.txt from the world's words and save a CLIPTokenizer."""
    from ip2p.world.recipe import TOKENIZER_DIR
    from ip2p.world.tokenizer import build_tokenizer

    tok = build_tokenizer(out or TOKENIZER_DIR)
    typer.echo(f"tokenizer: {len(tok)} tokens -> {out or TOKENIZER_DIR}")


@world_app.command("train-vae")
def train_vae_cmd(steps: int = 700, batch: int = 32, seed: int = 0, decoder_steps: int = 500,
                  decoder_only: bool = typer.Option(False, help="run phase 2 only, on the phase-1 VAE in --out"),
                  refine_steps: int = typer.Option(0, help="run phase 3 only (after train-sd): anchored refinement"),
                  out: Path = typer.Option(None, help="folder (default: the shipped sd/vae)")) -> None:
    """Train the world's AutoencoderKL (64x64 <-> 16x16x4): whole VAE, then the decoder alone;
    after train-sd, `--refine-steps N` refines both halves with the latents anchored in place."""
    from ip2p.world.recipe import SD_DIR
    from ip2p.world.train_vae import refine_vae, train_vae

    if refine_steps:
        rec = refine_vae(out or SD_DIR / "vae", steps=refine_steps, batch=batch)
        typer.echo(f"vae (refined): {rec['figures']} drift {rec['refine_final_drift_mse']:.4f} in {rec['wall_time_s']} s")
        return
    rec = train_vae(out or SD_DIR / "vae", steps=steps, batch=batch, seed=seed, decoder_steps=decoder_steps,
                    decoder_only=decoder_only)
    typer.echo(f"vae: {rec['figures']} scaling_factor={rec['scaling_factor']} in {rec['wall_time_s']} s")


@world_app.command("sharpen-vae")
def sharpen_vae_cmd(logvar_shift: float = typer.Option(-10.0, help="added to the encoder's log-variance output"),
                    out: Path = typer.Option(None, help="folder (default: the shipped sd/vae)")) -> None:
    """After train-vae: make the VAE posterior nearly deterministic, as SD's (mean and decoder unchanged)."""
    from ip2p.world.recipe import SD_DIR
    from ip2p.world.train_vae import sharpen_posterior

    rec = sharpen_posterior(out or SD_DIR / "vae", logvar_shift=logvar_shift)
    typer.echo(f"vae posterior std {rec['posterior_std_before']:.4f} -> {rec['posterior_std_after']:.6f}")


@world_app.command("finetune-vae-decoder")
def finetune_vae_decoder_cmd(items: int = typer.Option(2000, help="training edits (inputs and targets) to train on"),
                             steps: int = 300, batch: int = 32,
                             out: Path = typer.Option(None, help="folder (default: the shipped sd/vae)")) -> None:
    """After sharpen-vae: fine-tune the decoder alone on world edits (encoder and latents unchanged)."""
    from ip2p.world.recipe import SD_DIR
    from ip2p.world.train_vae import finetune_decoder_on_edits

    rec = finetune_decoder_on_edits(out or SD_DIR / "vae", n_items=items, steps=steps, batch=batch)
    typer.echo(f"vae: edit round-trip L1 {rec['edit_roundtrip_l1_before']['l1_mean']} -> "
               f"{rec['edit_roundtrip_l1_after']['l1_mean']} in {rec['wall_time_s']} s")


@world_app.command("train-sd")
def train_sd_cmd(steps: int = 1500, batch: int = 32, seed: int = 0,
                 out: Path = typer.Option(None, help="pipeline folder (default: the shipped sd)")) -> None:
    """Train the world's text encoder + UNet on world captions; save a StableDiffusionPipeline folder."""
    from ip2p.world.recipe import SD_DIR
    from ip2p.world.train_sd import train_sd

    rec = train_sd(out or SD_DIR, steps=steps, batch=batch, seed=seed)
    typer.echo(f"sd: final loss {rec['final_loss']:.4f} in {rec['wall_time_s']} s")


@world_app.command("train-clip")
def train_clip_cmd(which: str = typer.Option("metric", help="metric (world:clip) or guide (world:clip-guide)"),
                   steps: int = typer.Option(None, help="default: the recipe's"),
                   out: Path = typer.Option(None)) -> None:
    """Train one of the world's two open_clip models contrastively on world scenes and captions."""
    from ip2p.world.train_clip import CLIP_RECIPES, train_clip

    if which not in CLIP_RECIPES:
        raise typer.BadParameter(f"--which must be one of {sorted(CLIP_RECIPES)}, got {which!r}")
    rec = train_clip(which, out=out, steps=steps)
    typer.echo(f"clip ({which}): {rec['figures']} in {rec['wall_time_s']} s")


@world_app.command("cards")
def cards_cmd(evaluate: bool = typer.Option(True, help="recompute the sanity figures on the test split")) -> None:
    """Write the model cards (README.md beside each model's weights) from training records and figures."""
    from ip2p.world.cards import write_cards

    for p in write_cards(evaluate=evaluate):
        typer.echo(f"wrote {p}")


@world_app.command("report")
def report_cmd(out: Path = Path("reports/world")) -> None:
    """Figures: sample edits per category, and text-to-image samples of the world's SD."""
    from ip2p.world.report import write_report

    for p in write_report(out):
        typer.echo(f"wrote {p}")


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
