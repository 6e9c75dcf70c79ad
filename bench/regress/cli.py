"""The ``ip2p regress`` command: gate a checkpoint against a golden file (see ``bench.regress``).

Its exit status is the gate's outcome (``bench.regress.report``): 0 holds, 1 regression, 2 could
not judge (the reason on one line, the report still written), 130 interrupted."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ip2p.errors import SpecError


def register(app: typer.Typer) -> None:
    app.command("regress")(regress_command)


def regress_command(
    suite: str = typer.Option(..., "--suite", help="suite spec (YAML file, or a suite name in bench/suites/)"),
    golden: Path = typer.Option(..., "--golden", help="golden file to judge against (or to write with --update-golden)"),
    model: Optional[List[str]] = typer.Option(None, "--model", help="model to judge instead of the suite's: "
                                              "SOURCE for a one-method suite, LABEL=SOURCE otherwise (repeatable)"),
    update_golden: bool = typer.Option(False, "--update-golden", help="run the suite and write the golden file "
                                       "(spec, versions, metric spec, weights hash, per-item values)"),
    out: Optional[Path] = typer.Option(None, "--out", help="sweep run folder (default results/runs/regress/"
                                       "<suite>-<weights hash>-<git commit>-b<batch size>; a rerun of the same "
                                       "weights, code and batch size resumes there)"),
    fresh: bool = typer.Option(False, help="delete the run folder first and recompute everything"),
    batch_size: Optional[int] = typer.Option(None, help="edits per editor call (results depend on it only by "
                                             "float rounding, far below every tolerance; a folder keeps one)"),
    device: Optional[str] = typer.Option(None, help="torch device (default: the suite's; auto = cuda or cpu)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="JSON report (default <run>/regress.json)"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="JUnit XML (default <run>/regress.junit.xml)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Run a suite on a model and compare every metric with a golden file by paired per-item
    differences and a bootstrap interval. Exit 0: holds; 1: a metric got worse beyond its
    tolerance; 2: could not run (a golden of another measurement is refused, never compared).
    Under torchrun each process runs its share; rank 0 judges."""
    from bench.regress import run_regress, with_models
    from bench.spec import load_spec

    spec = with_models(load_spec(suite), model or [])
    if batch_size is not None:
        if batch_size < 1:
            raise SpecError(f"--batch-size {batch_size}: must be >= 1 (edits per editor call)")
        spec = spec.model_copy(update={"batch_size": batch_size})
    report = run_regress(spec, golden, out=out, update_golden=update_golden, fresh=fresh, device=device,
                         base_dir=Path(suite).parent if Path(suite).exists() else None, progress=progress,
                         json_path=json_out or "auto", junit_path=junit or "auto")
    if report.status == "rank-done":
        raise SystemExit(0)
    _show(report, json_out, junit)
    raise SystemExit(report.exit_code)


def _show(report, json_out: Optional[Path], junit: Optional[Path]) -> None:
    """The verdict table (or the one-line reason it could not judge) and where the reports are."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # CI logs: wide enough for the whole table
        console = Console(width=150)
    if report.exit_code == 2:
        typer.secho(f"error: {report.message}", fg=typer.colors.RED, err=True)
    else:
        report.render(console)
    if report.run_dir:
        typer.echo(f"report: {Path(report.run_dir) / 'regress.json' if json_out is None else json_out}, "
                   f"{Path(report.run_dir) / 'regress.junit.xml' if junit is None else junit}", err=True)
