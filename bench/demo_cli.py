"""The ``ip2p demo`` command: the small world end to end (``bench.demo``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    out: Path = typer.Option(Path("reports/demo"), "--out", help="folder for the report, figures and tables"),
    run_dir: Path = typer.Option(Path("results/runs/demo-world"), help="run folder (resumable)"),
    fresh: bool = typer.Option(False, help="delete the run folder first and recompute everything"),
    items: Optional[int] = typer.Option(None, help="world test items (default: the suite's)"),
    steps: Optional[int] = typer.Option(None, help="sampler steps (default: the suite's)"),
    model: Optional[str] = typer.Option(None, help="replace world:ip2p (e.g. 'tiny' for a smoke run)"),
    clip_model: Optional[str] = typer.Option(None, help="replace world:clip (a CLIP folder)"),
    baselines: bool = typer.Option(True, help="include the registered baselines (SDEdit, ...)"),
) -> None:
    """The small world end to end: sweep (InstructPix2Pix and registered baselines), metrics,
    aggregate, figure and HTML report, on CPU in minutes."""
    from bench.demo import run_demo

    res = run_demo(out, run_dir=run_dir, fresh=fresh, items=items, steps=steps, model=model, clip_model=clip_model,
                   baselines=baselines)
    typer.echo(f"demo done in {res['seconds']:.0f} s: {res['report']}")
