"""Commands of the harness: ``ip2p sweep``, ``aggregate``, ``plot``, ``report`` and ``demo``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ip2p.errors import SpecError


def register(app: typer.Typer) -> None:
    @app.command()
    def sweep(
        spec: str = typer.Argument(..., help="experiment spec (YAML file, or a suite name in bench/suites/)"),
        out: Optional[Path] = typer.Option(None, "--out", help="run folder (default results/runs/<spec name>)"),
        device: Optional[str] = typer.Option(None, help="torch device (default: the spec's; auto = cuda:LOCAL_RANK or cpu)"),
        shard_rows: int = typer.Option(64, help="rows per result shard (at most this many are lost if killed)"),
        on_bad_row: str = typer.Option("raise", help="raise | skip: what to do with a malformed dataset row "
                                       "(missing or undecodable image, target or mask, missing field)"),
        max_units: Optional[int] = typer.Option(None, help="refuse a sweep expanding to more work units "
                                                "(default: the spec's max_units, 1000000)"),
        progress: bool = typer.Option(True, help="show a progress bar"),
    ):
        """Run an experiment spec (resumable; under torchrun/accelerate each process takes its share)."""
        from bench.spec import load_spec
        from bench.sweep import check_device, check_output_folder, check_sweep_options, run_sweep

        check_sweep_options(shard_rows=shard_rows, on_bad_row=on_bad_row)
        if max_units is not None and max_units < 1:
            raise SpecError(f"--max-units {max_units}: must be >= 1")
        if device is not None and device != "auto":
            check_device(device, "--device")
        if out is not None:
            check_output_folder(out)
        s = load_spec(spec, max_units=max_units)
        out_dir = out or default_run_folder(s.name)
        res = run_sweep(s, out_dir, base_dir=Path(spec).parent if Path(spec).exists() else None, device=device,
                        shard_rows=shard_rows, progress=progress, on_bad_row=on_bad_row)
        who = f"rank {res.rank}/{res.world_size}: " if res.world_size > 1 else ""
        repaired = res.stats.get("units_repaired") or 0
        bad = res.stats.get("bad_rows") or []
        moved = res.stats.get("shards_quarantined") or []
        typer.echo(f"{who}{res.units_run} edits run, {res.units_skipped} already stored, {res.shards_written} shard(s) "
                   f"written in {res.seconds:.1f} s -> {res.run_dir}"
                   + (f"; {repaired} corrupt stored image(s) regenerated" if repaired else "")
                   + (f"; {len(moved)} damaged or stray shard file(s) moved to quarantine/ and their units run "
                      f"again (first: {moved[0]})" if moved else "")
                   + (f"; {len(bad)} bad row(s) skipped (first: {bad[0]})" if bad else ""))

    @app.command()
    def aggregate(
        run: Path = typer.Argument(..., help="run folder written by `ip2p sweep`"),
        out: Optional[Path] = typer.Option(None, "--out", help="folder for aggregate.csv/.parquet (default: the run)"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples (>= 1)"),
        category: str = typer.Option("(all)", help="category to print ('*' for every category)"),
        metrics: Optional[str] = typer.Option(None, help="comma-separated metric columns to print"),
    ):
        """Mean and bootstrap 95% interval of every metric per setting (and per category)."""
        from bench.aggregate import aggregate as agg_fn, metric_columns, print_table, write_aggregate
        from bench.sweep import check_output_folder

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

    @app.command()
    def plot(
        run: Path = typer.Argument(..., help="run folder written by `ip2p sweep`"),
        out: Optional[Path] = typer.Option(None, "--out", help="output path without extension (default <run>/tradeoff)"),
        category: str = typer.Option("(all)", help="plot one category's items only"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples of the error bars (>= 1)"),
    ):
        """The paper's figure (CLIP image vs. directional similarity) as PDF and PNG."""
        from bench.aggregate import aggregate as agg_fn
        from bench.plot import method_names_of, plot_tradeoff
        from bench.sweep import check_output_folder

        check_n_boot(n_boot)
        if out is not None:
            if out.is_dir():
                raise SpecError(f"--out {out}: is a folder; give a file path without extension (e.g. {out / 'tradeoff'})")
            check_output_folder(out.parent)
        df = _load(run)
        _check_choice("--category", [category], _categories(df), "category")
        state = _say_state(run, df)
        agg = agg_fn(df, n_boot=n_boot)
        paths = plot_tradeoff(agg, out or run / "tradeoff", method_names=method_names_of(run), category=category,
                              note=f"partial: {state.line()}" if state.partial else None)
        typer.echo(f"wrote {paths['pdf']} and {paths['png']}")

    @app.command()
    def report(
        run: Path = typer.Argument(..., help="run folder written by `ip2p sweep`"),
        out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default <run>/report.html)"),
        items: int = typer.Option(8, help="items shown in the image grid (>= 0)"),
    ):
        """One self-contained HTML report (tables, figure, image grids; images embedded)."""
        from bench.report import build_report
        from bench.sweep import check_output_folder

        if items < 0:
            raise SpecError(f"--items {items}: must be >= 0 (items shown in the image grid)")
        if out is not None:
            if out.is_dir():
                raise SpecError(f"--out {out}: is a folder; give an HTML file path (e.g. {out / 'report.html'})")
            check_output_folder(out.parent)
        df = _load(run)
        _say_state(run, df)
        path = build_report(run, out, n_items=items)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    @app.command()
    def demo(
        out: Path = typer.Option(Path("reports/demo"), "--out", help="folder for the report, figures and tables"),
        run_dir: Path = typer.Option(Path("results/runs/demo-world"), help="run folder (resumable)"),
        fresh: bool = typer.Option(False, help="delete the run folder first and recompute everything"),
        items: Optional[int] = typer.Option(None, help="world test items (default: the suite's)"),
        steps: Optional[int] = typer.Option(None, help="sampler steps (default: the suite's)"),
        model: Optional[str] = typer.Option(None, help="replace world:ip2p (e.g. 'tiny' for a smoke run)"),
        clip_model: Optional[str] = typer.Option(None, help="replace world:clip (a CLIP folder)"),
        baselines: bool = typer.Option(True, help="include the registered baselines (SDEdit, ...)"),
    ):
        """The small world end to end: sweep (InstructPix2Pix and registered baselines), metrics,
        aggregate, figure and HTML report, on CPU in minutes."""
        from bench.demo import run_demo

        res = run_demo(out, run_dir=run_dir, fresh=fresh, items=items, steps=steps, model=model, clip_model=clip_model,
                       baselines=baselines)
        typer.echo(f"demo done in {res['seconds']:.0f} s: {res['report']}")


def default_run_folder(spec_name: str) -> Path:
    """``results/runs/<spec name>``, the name made safe as one folder name (``ip2p.util.paths``)."""
    from ip2p.util.paths import safe_name, safe_output_path

    return safe_output_path(Path("results/runs"), safe_name(spec_name), what="spec name")


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
