"""The ``ip2p sweep`` command: run an experiment spec into a run folder (``bench.sweep``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ip2p.errors import SpecError


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)


def sweep_command(
    spec: str = typer.Argument(..., help="experiment spec (YAML file, or a suite name in bench/suites/)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default results/runs/<spec name>)"),
    device: Optional[str] = typer.Option(None, help="torch device (default: the spec's; auto = cuda:LOCAL_RANK or cpu)"),
    shard_rows: int = typer.Option(64, help="rows per result shard (at most this many are lost if killed)"),
    on_bad_row: str = typer.Option("raise", help="raise | skip: what to do with a malformed dataset row "
                                   "(missing or undecodable image, target or mask, missing field)"),
    max_units: Optional[int] = typer.Option(None, help="refuse a sweep expanding to more work units "
                                            "(default: the spec's max_units, 1000000)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Run an experiment spec (resumable; under torchrun/accelerate each process takes its share)."""
    from bench.run_folder import check_output_folder
    from bench.spec import load_spec
    from bench.sweep import check_sweep_options, run_sweep
    from ip2p.util.devices import check_device

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
    typer.echo(summary_line(res))


def summary_line(res) -> str:
    """One line of what a sweep invocation did (``bench.sweep.SweepResult``)."""
    who = f"rank {res.rank}/{res.world_size}: " if res.world_size > 1 else ""
    repaired = res.stats.get("units_repaired") or 0
    bad = res.stats.get("bad_rows") or []
    moved = res.stats.get("shards_quarantined") or []
    return (f"{who}{res.units_run} edits run, {res.units_skipped} already stored, {res.shards_written} shard(s) "
            f"written in {res.seconds:.1f} s -> {res.run_dir}"
            + (f"; {repaired} corrupt stored image(s) regenerated" if repaired else "")
            + (f"; {len(moved)} damaged or stray shard file(s) moved to quarantine/ and their units run "
               f"again (first: {moved[0]})" if moved else "")
            + (f"; {len(bad)} bad row(s) skipped (first: {bad[0]})" if bad else ""))


def default_run_folder(spec_name: str) -> Path:
    """``results/runs/<spec name>``, the name made safe as one folder name (``ip2p.util.paths``)."""
    from ip2p.util.paths import safe_name, safe_output_path

    return safe_output_path(Path("results/runs"), safe_name(spec_name), what="spec name")


__all__ = ["register", "sweep_command", "default_run_folder"]
