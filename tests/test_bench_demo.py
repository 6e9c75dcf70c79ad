"""`ip2p demo` end to end through its CLI code path, with the tiny random model and a random CLIP
standing in for world:ip2p / world:clip (the shipped models are checked by the demo itself)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.demo import run_demo
from bench.testing import random_clip_folder


@pytest.mark.slow
def test_demo_writes_report_figures_and_tables(tmp_path):
    clip = random_clip_folder(tmp_path / "clip")
    out = tmp_path / "demo"
    res = run_demo(out, run_dir=tmp_path / "run", items=2, steps=1, model="tiny", clip_model=str(clip),
                   baselines=False, progress=False)
    assert res["rows"] == 2 * 10  # 2 items x (2 sT x 5 sI)
    for name in ("report.html", "tradeoff.pdf", "tradeoff.png", "aggregate.csv", "results.parquet",
                 "manifest.json", "spec.yaml"):
        assert (out / name).stat().st_size > 0, name
    agg = pd.read_csv(out / "aggregate.csv")
    rows = pd.read_parquet(out / "results.parquet")
    overall = agg[agg["category"] == "(all)"]
    assert len(overall) == 10 and (overall["n_items"] == 2).all()
    assert set(agg["category"]) - {"(all)"} == set(rows["category"])  # world categories get their own rows
    assert json.loads((out / "manifest.json").read_text())["status"]["state"] == "complete"
    # a second run resumes: nothing is recomputed
    again = run_demo(out, run_dir=tmp_path / "run", items=2, steps=1, model="tiny", clip_model=str(clip),
                     baselines=False, progress=False)
    assert again["rows"] == 20
