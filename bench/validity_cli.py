"""`ip2p validity`: sweep the world with every method (or read a finished world sweep) and report how
well each metric ranks edits against the world's truth (``bench.validity``)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("validity")(validity_command)


def validity_command(
    run: Path = typer.Option(Path("results/runs/validity"), "--run", help="Run folder of the validity sweep (resumable)."),
    out: Path = typer.Option(Path("reports/validity"), "--out", help="Folder for the tables, figure and README."),
    items: int = typer.Option(192, "--items", help="World test items (edits = items x 13 settings)."),
    steps: int = typer.Option(20, "--steps", help="Sampler steps of InstructPix2Pix and SDEdit."),
    judge: Optional[Path] = typer.Option(None, "--judge", help="YAML of a judge (the fields of metrics.judge) to score too."),
    dino: bool = typer.Option(False, "--dino/--no-dino", help="Also DINO similarity (needs facebook/dino-vits16 offline)."),
    analyse_only: bool = typer.Option(False, "--analyse-only", help="Do not sweep: analyse the rows --run already holds."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of items."),
    label: str = typer.Option("", "--label", help="A line for the README (e.g. which world models were used)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Only print the edit-success calibration (exact target, "
                                   "VAE round trip of world:sd's VAE, identity) per category and exit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the sweep's progress bar."),
) -> None:
    """Agreement of every metric (CLIP directional, CLIP image, CLIP-T, DINO, LPIPS, L1 to the input,
    a judge) with the world's truth (exact edit success, L1 to the target): per item and per
    category (pairwise ranking accuracy, Kendall's tau, bootstrap intervals) and per setting."""
    from ip2p.errors import SpecError

    if calibrate:
        return _calibrate(items)
    if n_boot < 1 or items < 1:
        raise SpecError(f"--n-boot {n_boot} / --items {items}: must be >= 1")
    command = "ip2p " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["validity"] else \
        f"ip2p validity --items {items} --steps {steps}"
    res = run_validity(run, out, items=items, steps=steps, judge=judge, analyse_only=analyse_only, n_boot=n_boot,
                       label=label, progress=progress, command=command, dino=dino)
    typer.echo(f"validity: {res['n_rows']} edits analysed; report in {out}/README.md")


def run_validity(run: Path, out: Path, *, items: int = 192, steps: int = 20, judge: Path | None = None,
                 analyse_only: bool = False, n_boot: int = 1000, label: str = "", progress: bool = False,
                 command: str = "", dino: bool = False) -> dict:
    """Sweep (unless ``analyse_only``), analyse and write the report; returns its figures."""
    from bench.spec import parse_spec
    from bench.store import load_results
    from bench.sweep import run_sweep
    from bench.validity import (agreement, check_truth, complete_items, load_judge_section, metrics_present,
                                system_level, validity_spec)
    from bench.validity_report import write_report
    from ip2p.errors import SpecError

    if not analyse_only:
        spec = parse_spec(validity_spec(items, steps, load_judge_section(judge), dino=dino), source="validity spec")
        run_sweep(spec, run, progress=progress)
    if not Path(run).is_dir():
        raise SpecError(f"--run {run}: no such run folder; run `ip2p validity` without --analyse-only first")
    every = load_results(run)
    check_truth(every, f"--run {run}")
    df = complete_items(every)
    metrics = metrics_present(df)
    agree = agreement(df, metrics, n_boot=n_boot)
    settings, taus = system_level(df, metrics)
    meta = {"run": str(run), "n_rows": int(len(df)), "n_rows_left_out": int(len(every) - len(df)), "n_items": int(df["item_id"].nunique()),
            "n_settings": int(len(settings)), "n_boot": n_boot, "label": label, "command": command,
            "metrics": metrics}
    write_report(Path(out), agree, settings, taus, meta, notes=_notes(out))
    return meta


def _notes(out: Path) -> str:
    """The hand-written reading of the results (``<out>/NOTES.md``), kept across regenerations."""
    p = Path(out) / "NOTES.md"
    return p.read_text() if p.is_file() else ""


def _calibrate(items: int) -> None:
    import json

    from ip2p.metrics.success import calibrate
    from ip2p.models import resolve_source

    typer.echo(json.dumps(calibrate("test", n=items, vae_folder=str(Path(resolve_source("world:sd")) / "vae")), indent=1))


__all__ = ["register", "run_validity"]
