"""The ``ip2p data`` commands: generate Prompt-to-Prompt training pairs and CLIP-filter them.

    ip2p data pairs --model world:sd --prompts world:triplets --limit 400 --n 8 --steps 10 --out data/pairs
    ip2p data filter --clip world:clip data/pairs          # seeds.json of the kept pairs + a table
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(no_args_is_help=True, help="Training data: Prompt-to-Prompt pairs and the CLIP filter.")


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        from ip2p.errors import SpecError

        raise SpecError(f"--dtype {name!r}: expected one of {', '.join(table)}")
    return table[name]


def _clip(model: str, pretrained: Optional[str], device: Optional[str], cache: Optional[Path]):
    from ip2p.metrics import ClipSimilarity

    return ClipSimilarity(model, None if model.startswith("world:") and pretrained is None else pretrained,
                          device=device, cache=str(cache) if cache else None)


@data_app.command("pairs")
def pairs_command(
    model: str = typer.Option(..., help="Text-to-image model: world:sd, tiny-t2i, a diffusers folder or hub id."),
    prompts: str = typer.Option(..., help="Prompt file (JSON lines with input or caption, edit, output) or world:triplets."),
    out: Path = typer.Option(..., help="Output folder (the official layout); rerun to resume."),
    n: int = typer.Option(100, "--n", "--n-samples", help="Pairs per prompt (the paper: 100, before filtering)."),
    steps: int = typer.Option(100, help="Euler-ancestral steps (the paper: 100)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts (world:triplets: N items; default 1000)."),
    seed: int = typer.Option(0, help="Run seed: decides every pair's seed."),
    batch_size: int = typer.Option(8, help="Pairs per UNet batch (4 rows each)."),
    min_p2p: float = typer.Option(0.1, help="p ~ U(min, max): fraction of steps whose self-attention is copied."),
    max_p2p: float = typer.Option(0.9),
    min_cfg: float = typer.Option(7.5, help="cfg ~ U(min, max): classifier-free guidance scale."),
    max_cfg: float = typer.Option(15.0),
    resolution: Optional[int] = typer.Option(None, help="Image size (default: the model's native size)."),
    clip: Optional[str] = typer.Option(None, help="Also compute the four CLIP similarities now (else `ip2p data filter`)."),
    clip_pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag for --clip (e.g. openai)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)."),
    dtype: str = typer.Option("float32", help="float32 | float16 | bfloat16 (models; sampling runs in float32)."),
    partition: int = typer.Option(0, help="This process's block of the prompts (0-based), as the official script."),
    n_partitions: int = typer.Option(1, help="Number of blocks (e.g. one process per GPU, each with its --partition)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Generate Prompt-to-Prompt image pairs for caption triplets (resumable; kill and rerun at will)."""
    from ip2p.data.pairs import generate_pairs

    sims = _clip(clip, clip_pretrained, device, None) if clip else None
    summary = generate_pairs(model, prompts, out, n_per_prompt=n, steps=steps, run_seed=seed, batch_size=batch_size,
                             p2p_range=(min_p2p, max_p2p), cfg_range=(min_cfg, max_cfg), limit=limit, device=device,
                             dtype=_dtype(dtype), resolution=resolution, clip=sims, progress=progress,
                             partition=partition, n_partitions=n_partitions)
    typer.echo(f"{out}: {summary['pairs']} pairs of {summary['prompts']} prompts ({summary['generated_now']} generated now, "
               f"{summary['rows_repaired']} metadata rows repaired) in {summary['seconds']} s; seeds.json lists "
               f"{summary['pairs_listed']} pairs")


@data_app.command("filter")
def filter_command(
    folder: Path = typer.Argument(..., help="A folder written by `ip2p data pairs` (official layout)."),
    clip: str = typer.Option(..., help="CLIP model: ViT-L-14 (with --clip-pretrained openai, the paper's), world:clip, a folder."),
    clip_pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag (e.g. openai)."),
    min_image: float = typer.Option(0.75, help="Keep if cos(I0, I1) >= this (the paper: 0.75; the official code's default 0.7)."),
    min_direction: float = typer.Option(0.2, help="Keep if cos(I1 - I0, T1 - T0) >= this."),
    min_sim_0: float = typer.Option(0.2, help="Keep if cos(I0, T0) >= this."),
    min_sim_1: float = typer.Option(0.2, help="Keep if cos(I1, T1) >= this."),
    max_per_prompt: int = typer.Option(4, help="Keep at most this many pairs per prompt, best directional first (0: no cap)."),
    seeds_out: Optional[Path] = typer.Option(None, help="Where to write the kept pairs' seeds.json (default: FOLDER/seeds.json)."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache (SQLite file or folder; default: FOLDER/clip_embeddings.sqlite)."),
    batch_size: int = typer.Option(64, help="Pairs per CLIP batch."),
    device: Optional[str] = typer.Option(None),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Compute the four CLIP similarities of every pair, keep those above the thresholds (at most k per prompt)."""
    from ip2p.data.filtering import ClipFilter
    from ip2p.data.pair_filter import filter_pairs

    flt = ClipFilter(min_image=min_image, min_direction=min_direction, min_sim_0=min_sim_0, min_sim_1=min_sim_1,
                     max_per_prompt=max_per_prompt or None)
    sims = _clip(clip, clip_pretrained, device, cache or folder / "clip_embeddings.sqlite")
    report = filter_pairs(folder, sims, flt, seeds_out=seeds_out, batch_size=batch_size, progress=progress)
    typer.echo(report["table"])
    typer.echo(f"kept {report['kept']} of {report['pairs']} pairs -> {report['seeds_json']}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
