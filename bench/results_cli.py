"""Commands that read a finished (or partial) run folder: ``ip2p aggregate``, ``plot`` and ``report``.

Each says how far the run is when it is not complete, and names damaged shards and stored images."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ip2p.errors import SpecError


def register(app: typer.Typer) -> None:
    app.command("aggregate")(aggregate_command)
    app.command("plot")(plot_command)
    app.command("report")(report_command)


def aggregate_command(
    run: Path = typer.Argument(..., help="run folder written by `ip2p sweep`"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for aggregate.csv/.parquet (default: the run)"),
    n_boot: int = typer.Option(1000, help="bootstrap resamples (>= 1)"),
    category: str = typer.Option("(all)", help="category to print ('*' for every category)"),
    metrics: Optional[str] = typer.Option(None, help="comma-separated metric columns to print"),
) -> None:
    """Mean and bootstrap 95% interval of every metric per setting (and per category); with sweeps,
    the paired differences between each sweep's ends (sweep_ends.csv)."""
    from bench.aggregate import aggregate as agg_fn, metric_columns, print_table, write_aggregate
    from bench.sweep_ends import curve_sweep_ends, write_sweep_ends
    from bench.run_folder import check_output_folder

    check_n_boot(n_boot)
    if out is not None:
        check_output_folder(out)
    df = _load(run)
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    if names is not None:
        _check_choice("--metrics", names, metric_columns(df), "metric")
    if category != "*":
        _check_choice("--category", [category], _categories(df), "category")
    state = _say_state(run, df)
    agg = agg_fn(df, n_boot=n_boot)
    paths = write_aggregate(agg, out or run)
    print_table(agg, category=None if category == "*" else category, metrics=names,
                note=f"partial: {state.line()}" if state.partial else None)
    typer.echo(f"wrote {paths['csv']} and {paths['parquet']}")
    ends_csv = write_sweep_ends(curve_sweep_ends(df, agg, run), out or run)
    if ends_csv:
        typer.echo(f"wrote {ends_csv} (paired differences between each sweep's ends)")


def plot_command(
    run: Path = typer.Argument(..., help="run folder written by `ip2p sweep`"),
    out: Optional[Path] = typer.Option(None, "--out", help="output path without extension (default <run>/tradeoff)"),
    category: str = typer.Option("(all)", help="plot one category's items only"),
    n_boot: int = typer.Option(1000, help="bootstrap resamples of the error bars (>= 1)"),
) -> None:
    """The paper's figure (CLIP image vs. directional similarity) as PDF and PNG."""
    from bench.aggregate import aggregate as agg_fn
    from bench.plot import method_names_of, plot_tradeoff

    check_n_boot(n_boot)
    _check_file_out(out, "give a file path without extension (e.g. {})", "tradeoff")
    df = _load(run)
    _check_choice("--category", [category], _categories(df), "category")
    state = _say_state(run, df)
    agg = agg_fn(df, n_boot=n_boot)
    paths = plot_tradeoff(agg, out or run / "tradeoff", method_names=method_names_of(run), category=category,
                          note=f"partial: {state.line()}" if state.partial else None)
    typer.echo(f"wrote {paths['pdf']} and {paths['png']}")


def report_command(
    run: Path = typer.Argument(..., help="run folder written by `ip2p sweep`"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default <run>/report.html)"),
    items: int = typer.Option(8, help="items shown in the image grid (>= 0)"),
    edits_png: bool = typer.Option(True, help="also write edits.png beside the report (one item per category)"),
) -> None:
    """One self-contained HTML report (tables, figure, image grids; images embedded), and edits.png."""
    from bench.report import build_report

    if items < 0:
        raise SpecError(f"--items {items}: must be >= 0 (items shown in the image grid)")
    _check_file_out(out, "give an HTML file path (e.g. {})", "report.html")
    df = _load(run)
    _say_state(run, df)
    path = build_report(run, out, n_items=items)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if edits_png:
        from bench.edit_grid import edit_grid

        png = edit_grid(run, df, path.parent / "edits.png")
        typer.echo(f"wrote {png}" if png else "no stored images: edits.png not written (sweep with save_images: true)")


def _check_file_out(out: Optional[Path], hint: str, example: str) -> None:
    """Refuse an ``--out`` file path that is a folder or whose folder cannot be written."""
    from bench.run_folder import check_output_folder

    if out is None:
        return
    if out.is_dir():
        raise SpecError(f"--out {out}: is a folder; " + hint.format(out / example))
    check_output_folder(out.parent)


def _load(run: Path):
    from bench.store import current_rows, load_results

    if not run.exists():
        raise SpecError(f"run folder not found: {run}")
    if not run.is_dir():
        raise SpecError(f"run folder {run}: is a file; give the folder `ip2p sweep --out` wrote")
    df, left_out = current_rows(run, load_results(run))
    if left_out:
        typer.echo(f"note: {left_out} stored row(s) belong to units the newest spec no longer has (a smaller "
                   "dataset.limit, grid or seed list); only the newest spec's units are used")
    if df.empty:
        raise SpecError(f"{run} holds no result rows of its newest spec yet; run `ip2p sweep <spec> --out {run}` first")
    return df


def check_n_boot(n_boot: int) -> None:
    if n_boot < 1:
        raise SpecError(f"--n-boot {n_boot}: must be >= 1 (bootstrap resamples; 1000 is usual)")


def _categories(df) -> list[str]:
    from bench.aggregate import ALL

    cats = sorted(str(c) for c in df["category"].dropna().unique()) if "category" in df else []
    return [ALL, *cats]


def _check_choice(option: str, given: list[str], known: list[str], what: str) -> None:
    unknown = [g for g in given if g not in known]
    if unknown:
        raise SpecError(f"{option}: unknown {what} {unknown[0]!r}; this run has: {', '.join(known)}")


def _say_state(run: Path, df):
    """Print how far the run is when it is not complete, and name stored images that are missing
    or corrupt; returns the ``RunState``."""
    from bench.store import RunStore, bad_stored_images, describe_bad_images, run_state

    state = run_state(run, df)
    if state.partial:
        typer.echo(f"partial results: {state.line()}")
    elif state.state in ("running", "interrupted", "failed"):
        typer.echo(f"all units done; the newest sweep is {state.state}")
    bad_shards = RunStore(run).bad_shards()
    if bad_shards:
        first = next(iter(bad_shards))
        typer.secho(f"warning: {len(bad_shards)} file(s) in {run / 'shards'} skipped: {first.name}: {bad_shards[first]}"
                    f"; rerun `ip2p sweep <spec> --out {run}` to move them aside and regenerate their units",
                    fg=typer.colors.YELLOW, err=True)
    bad = bad_stored_images(run, df)
    if not bad.empty:
        typer.secho(f"warning: {describe_bad_images(run, bad)}", fg=typer.colors.YELLOW, err=True)
    return state
