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
    assert res["rows"] == 2 * 4  # 2 items x 4 sI at sT 7.5 (baselines=False: InstructPix2Pix alone)
    for name in ("report.html", "tradeoff.pdf", "tradeoff.png", "aggregate.csv", "results.parquet",
                 "manifest.json", "spec.yaml", "edits.png", "sweep_ends.csv"):
        assert (out / name).stat().st_size > 0, name
    agg = pd.read_csv(out / "aggregate.csv")
    rows = pd.read_parquet(out / "results.parquet")
    overall = agg[agg["category"] == "(all)"]
    assert len(overall) == 4 and (overall["n_items"] == 2).all()
    assert set(agg["category"]) - {"(all)"} == set(rows["category"])  # world categories get their own rows
    assert json.loads((out / "manifest.json").read_text())["status"]["state"] == "complete"
    # a second run resumes: nothing is recomputed
    again = run_demo(out, run_dir=tmp_path / "run", items=2, steps=1, model="tiny", clip_model=str(clip),
                     baselines=False, progress=False)
    assert again["rows"] == 8


def test_demo_spec_runs_every_baseline_with_a_demo_grid_on_its_item_limit():
    from bench.demo import demo_spec
    from bench.spec import parse_spec

    spec = parse_spec(demo_spec(items=100))
    by = {m.key: m for m in spec.methods}
    assert {"instructpix2pix", "identity", "sdedit", "text2live", "instructpix2pix+postedit"} <= set(by)
    assert by["instructpix2pix"].grid_values()["image_guidance_scale"] == [1.0, 1.5, 2.5, 5.0]
    assert by["instructpix2pix"].knobs["guidance_scale"] == 7.5 and spec.dataset.limit == 100
    assert by["text2live"].limit == 48 and by["instructpix2pix"].limit is None
    assert parse_spec(demo_spec(items=10)).methods[-1].limit == 10  # never more than the items asked for
