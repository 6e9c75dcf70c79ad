"""The paired end-to-end difference of each sweep in a run, as ``sweep_ends.csv``.

Above ``bench.aggregate`` (the statistics) and ``bench.plot`` (which knob is each method's curve)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.aggregate import sweep_end_differences
from bench.plot import curves, method_names_of


def write_sweep_ends(df: pd.DataFrame, agg: pd.DataFrame, run_dir: str | Path, out_folder: str | Path) -> pd.DataFrame:
    """``sweep_end_differences`` along each method's curve knob (as the figure draws it), written to
    ``out_folder/sweep_ends.csv`` (readable by all) when any sweep has two ends; returned."""
    knobs = {c["method"]: c["knob"] for c in curves(agg, method_names_of(Path(run_dir))) if c["knob"]}
    ends = sweep_end_differences(df, knobs)
    if not ends.empty:
        path = Path(out_folder) / "sweep_ends.csv"
        ends.to_csv(path, index=False)
        path.chmod(0o644)
    return ends
