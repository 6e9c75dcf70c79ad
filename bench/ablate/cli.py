"""The ``ip2p ablate`` command."""
from __future__ import annotations

import json
from pathlib import Path

from bench.ablate.pipeline import run_ablation
from bench.ablate.spec import load_ablation_spec


def register(app) -> None:
    import typer

    @app.command("ablate")
    def ablate_command(
        spec: Path = typer.Argument(..., help="Ablation spec (YAML); see bench/ablate/ and bench/ablations/world.yaml."),
        out: Path = typer.Option(None, "--out", help="Run folder (default results/runs/<spec name>); rerun to resume."),
        report: Path = typer.Option(None, "--report", help="Also copy the figure, tables and timings here (e.g. reports/ablation)."),
    ) -> None:
        """Data ablations: build dataset variants, train one checkpoint each, sweep them, plot one curve per variant."""
        s, _ = load_ablation_spec(spec)
        from bench.cli import default_run_folder

        res = run_ablation(spec, out or default_run_folder(s.name), report=report)
        for r in res["rows"]:
            typer.echo(json.dumps(r))
        typer.echo(f"figure: {res['figures']['png']}")
