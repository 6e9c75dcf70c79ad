"""The ``ip2p ablate`` command: the paper's data ablations from an ablation spec (``bench.ablate``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_command)


def ablate_command(
    spec: Path = typer.Argument(..., help="Ablation spec (YAML); see bench/ablate/ and bench/ablations/world.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default results/runs/<spec name>); rerun to resume."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also copy the figure, tables and timings here (e.g. reports/ablation)."),
) -> None:
    """Data ablations: build dataset variants, train one checkpoint each, sweep them, plot one curve per variant."""
    from bench.ablate.pipeline import run_ablation
    from bench.ablate.spec import load_ablation_spec
    from bench.sweep_cli import default_run_folder

    s, _ = load_ablation_spec(spec)
    res = run_ablation(spec, out or default_run_folder(s.name), report=report)
    for r in res["rows"]:
        typer.echo(json.dumps(r))
    typer.echo(f"figure: {res['figures']['png']}")
