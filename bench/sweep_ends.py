"""The paired end-to-end difference of each sweep in a run (``sweep_ends.csv``, the report's table).

Above ``bench.aggregate`` (the statistics) and ``bench.plot`` (which knob is each method's curve)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.aggregate import sweep_end_differences
from bench.plot import curves, method_names_of


def curve_sweep_ends(df: pd.DataFrame, agg: pd.DataFrame, run_dir: str | Path) -> pd.DataFrame:
    """``sweep_end_differences`` along each method's curve knob, as the figure draws it."""
    knobs = {c["method"]: c["knob"] for c in curves(agg, method_names_of(Path(run_dir))) if c["knob"]}
    return sweep_end_differences(df, knobs)


def write_sweep_ends(ends: pd.DataFrame, out_folder: str | Path) -> Path | None:
    """``out_folder/sweep_ends.csv`` (readable by all) when any sweep has two ends; its path, else None."""
    if ends.empty:
        return None
    path = Path(out_folder) / "sweep_ends.csv"
    ends.to_csv(path, index=False)
    path.chmod(0o644)
    return path
