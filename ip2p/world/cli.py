"""`ip2p world ...` commands: build the tokenizer, train the world's models, write cards and reports."""
from __future__ import annotations

from pathlib import Path

import typer

world_app = typer.Typer(no_args_is_help=True, help="The small world: scene generator, base-model recipes, cards.")


@world_app.command("build-tokenizer")
def build_tokenizer_cmd(out: Path = typer.Option(None, help="folder (default: the shipped sd/tokenizer)")) -> None:
    """Generate vocab.json + merges.txt from the world's words and save a CLIPTokenizer."""
    from ip2p.world import TOKENIZER_DIR
    from ip2p.data.world.tokenizer import build_tokenizer

    tok = build_tokenizer(out or TOKENIZER_DIR)
    typer.echo(f"tokenizer: {len(tok)} tokens -> {out or TOKENIZER_DIR}")


@world_app.command("train-vae")
def train_vae_cmd(steps: int = typer.Option(None, help="one phase of this many steps (default: the recipe's phases)"),
                  batch: int = 32,
                  lr: float = typer.Option(None, help="one phase's lr (default: the recipe's phases; 1e-3 alone)"),
                  seed: int = typer.Option(None, help="one phase's seed (default: the recipe's phases; 0 alone)"),
                  run_dir: Path = typer.Option(Path("runs/world-vae"), help="checkpoints; a rerun resumes from here"),
                  bf16: bool = typer.Option(True, help="bfloat16 autocast for forward and backward"),
                  init_checkpoint: Path = typer.Option(None, help="start from this checkpoint's weights (a second phase)"),
                  latent_channels: int = typer.Option(4, help="latent channels (4: the shipped world's latent; "
                                                         "another count needs its own --out and --run-dir)"),
                  out: Path = typer.Option(None, help="folder (default: the shipped sd/vae)")) -> None:
    """Train the world's AutoencoderKL (64x64 <-> 16x16x4) on caption scenes and edit inputs/targets,
    set its latent scale and make its posterior nearly deterministic; resumable. Without --steps,
    --lr, --seed or --init-checkpoint: the recipe's phases (ip2p.world.vae_recipe.PHASES) in turn."""
    from ip2p.world import SD_DIR
    from ip2p.world.vae_recipe import train_vae, train_vae_phases

    out = out or SD_DIR / "vae"
    if steps is None and lr is None and seed is None and init_checkpoint is None:
        rec = train_vae_phases(out, run_dir=run_dir, batch=batch, bf16=bf16, latent_channels=latent_channels)
    else:
        rec = train_vae(out, run_dir=run_dir, steps=steps or 3000, batch=batch, lr=lr or 1e-3, seed=seed or 0,
                        bf16=bf16, init_checkpoint=init_checkpoint, latent_channels=latent_channels)
    typer.echo(f"vae: round-trip L1 of test targets {rec['roundtrip_test_targets']['l1_mean']} "
               f"scaling_factor={rec['scaling_factor']} in {rec['wall_time_s']} s")


@world_app.command("train-sd")
def train_sd_cmd(steps: int = 8000, batch: int = 32, lr: float = 1e-3, n_images: int = 16384, seed: int = 0,
                 run_dir: Path = typer.Option(Path("runs/world-sd"), help="checkpoints; a rerun resumes from here"),
                 time_limit_minutes: float = typer.Option(None, help="checkpoint and stop after this long"),
                 out: Path = typer.Option(None, help="pipeline folder (default: the shipped sd)"),
                 device: str = typer.Option("cpu", help="cpu, or cuda to train on a GPU")) -> None:
    """Train the world's text encoder + UNet on world captions (needs the VAE and tokenizer in --out);
    save a StableDiffusionPipeline folder when done; resumable."""
    from ip2p.world import SD_DIR
    from ip2p.world.sd_recipe import train_sd

    rec = train_sd(out or SD_DIR, run_dir=run_dir, steps=steps, batch=batch, lr=lr, n_images=n_images, seed=seed,
                   time_limit_minutes=time_limit_minutes, device=device)
    if rec is not None:
        typer.echo(f"sd: final loss {rec['final_loss']:.4f} in {rec['wall_time_s']} s")


@world_app.command("train-ip2p")
def train_ip2p_cmd(steps: int = typer.Option(None, help="one stage of this many steps (default: the recipe's stages)"),
                   run_dir: Path = typer.Option(Path("runs/world-ip2p"), help="checkpoints; a rerun resumes"),
                   time_limit_minutes: float = typer.Option(None, help="checkpoint and stop after this long"),
                   base: str = typer.Option(None, help="text-to-image base (default world:sd)"),
                   ship: bool = typer.Option(True, help="copy into weights/ip2p and write the card when done"),
                   device: str = typer.Option("cpu", help="cpu, or cuda to train on a GPU")) -> None:
    """Train world:ip2p from world:sd with the project's trainer, stage by stage (each resumable; finished
    stages are skipped); ship and evaluate it when done."""
    from ip2p.world.ip2p_recipe import train_ip2p

    res = train_ip2p(run_dir, steps=steps, time_limit_minutes=time_limit_minutes, base=base, ship=ship, device=device)
    if res is not None:
        typer.echo("world:ip2p shipped; evaluation written to its card" if ship else
                   f"world:ip2p trained; its pipeline is in {run_dir} (not shipped: --no-ship)")


@world_app.command("evaluate-ip2p")
def evaluate_ip2p_cmd(n: int = 192, steps: int = 20) -> None:
    """Re-measure the shipped world:ip2p's card figures on the test split and rewrite its card."""
    from ip2p.world.ip2p_recipe import write_card

    write_card(n=n, steps=steps)


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
