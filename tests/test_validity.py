"""`ip2p validity` (bench.validity): agreement statistics on hand-made edits, and the command end to
end on a tiny world sweep (identity, oracle and a tiny random InstructPix2Pix)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.validity import agreement, item_table, summarize, system_level, validity_spec


def _frame(metric_of):
    """4 items x 4 edits whose truth (edit_success, target_l1) is known; ``metric_of(l1)`` a metric."""
    rows = []
    for i in range(4):
        for q, (succ, l1) in enumerate([(1.0, 0.0), (1.0, 0.01), (0.0, 0.05), (0.0, 0.1)]):
            rows.append({"item_id": f"it{i}", "seed": 0, "category": "add" if i < 2 else "remove",
                         "method": f"m{q}", "knobs": "{}", "edit_success": succ, "target_l1": l1,
                         "clip_sim_direction": metric_of(l1, i), "l1": 0.1 - l1})
    return pd.DataFrame(rows)


def test_a_perfect_metric_agrees_a_reversed_one_disagrees_and_ties_count_half():
    df = _frame(lambda l1, i: -l1)  # higher is better and ranks exactly as the truth
    tab = item_table(df, "clip_sim_direction", "target_l1")
    assert (tab["pairs"] == 6).all() and (tab["agree"] == 6).all() and np.allclose(tab["tau"], 1)
    s = summarize(tab, 200, np.random.default_rng(0))
    assert s["accuracy"] == 1 and s["accuracy_lo"] == 1 and s["tau"] == pytest.approx(1)
    # l1 to the input (lower better) here is 0.1 - l1: it prefers the edits farthest from the target
    assert summarize(item_table(df, "l1", "target_l1"), 200, np.random.default_rng(0))["accuracy"] == 0
    # edit success ties pairs within (1, 1) and (0, 0): only the 4 cross pairs of each item count
    tab = item_table(df, "clip_sim_direction", "edit_success")
    assert (tab["pairs"] == 4).all() and (tab["agree"] == 4).all()
    flat = _frame(lambda l1, i: 0.3)
    s = summarize(item_table(flat, "clip_sim_direction", "target_l1"), 100, np.random.default_rng(0))
    assert s["accuracy"] == 0.5 and math.isnan(s["tau"])  # a constant metric: a coin, no correlation


def test_agreement_per_category_and_system_level():
    df = _frame(lambda l1, i: -l1 if i < 2 else l1)  # right on "add", backwards on "remove"
    agg = agreement(df, ["clip_sim_direction"], n_boot=100)
    by = agg[agg["truth"] == "target_l1"].set_index("category")["accuracy"]
    assert by["add"] == 1 and by["remove"] == 0 and by["(all)"] == 0.5
    settings, taus = system_level(_frame(lambda l1, i: -l1), ["clip_sim_direction", "l1"])
    t = taus.set_index(["metric", "truth"])["kendall_tau"]
    assert t[("clip_sim_direction", "target_l1")] == pytest.approx(1) and t[("l1", "target_l1")] == pytest.approx(-1)
    assert list(settings.sort_values("rank_target_l1")["method"]) == ["m0", "m1", "m2", "m3"]


def test_items_missing_a_setting_are_left_out():
    from bench.validity import complete_items

    df = _frame(lambda l1, i: -l1)
    partial = df.drop(index=df[(df.item_id == "it3") & (df.method == "m2")].index)
    kept = complete_items(partial)
    assert sorted(kept["item_id"].unique()) == ["it0", "it1", "it2"] and len(kept) == 12


def test_validity_spec_has_every_method_with_oracle_and_identity():
    from bench.spec import parse_spec

    spec = parse_spec(validity_spec(items=7, steps=3, lpips=False))
    keys = [m.key for m in spec.methods]
    assert {"identity", "oracle", "instructpix2pix", "sdedit", "text2live", "instructpix2pix+postedit"} <= set(keys)
    assert sum(m.n_settings() for m in spec.methods) >= 13 and spec.dataset.limit == 7
    assert {"success", "target", "clip"} <= set(spec.metrics.compute)
    assert spec.methods[0].knobs["num_inference_steps"] == 3


def test_validity_command_on_a_tiny_world_sweep(tmp_path):
    from typer.testing import CliRunner

    from bench.spec import parse_spec
    from bench.sweep import run_sweep
    from bench.testing import random_clip_folder
    from ip2p.cli import app

    clip = random_clip_folder(tmp_path / "clip")
    spec = parse_spec({"name": "v", "dataset": {"kind": "world", "split": "test", "limit": 4},
                       "methods": [{"name": "identity"}, {"name": "oracle"},
                                   {"name": "instructpix2pix", "model": "tiny", "knobs": {"num_inference_steps": 1},
                                    "grid": {"image_guidance_scale": [1.0, 2.0]}}],
                       "metrics": {"compute": ["clip", "pixel", "target", "masked", "success"],
                                   "clip": {"model": str(clip), "pretrained": None}},
                       "device": "cpu", "batch_size": 8})
    run_sweep(spec, tmp_path / "run", progress=False)
    out = tmp_path / "report"
    (out).mkdir()
    (out / "NOTES.md").write_text("Hand-written reading: kept.")
    res = CliRunner().invoke(app, ["validity", "--run", str(tmp_path / "run"), "--out", str(out), "--analyse-only",
                                   "--n-boot", "50", "--label", "tiny test world"])
    assert res.exit_code == 0, res.output
    agree = pd.read_csv(out / "agreement.csv")
    assert {"clip_sim_direction", "clip_sim_image", "clip_sim_1", "l1"} <= set(agree["metric"])
    assert set(agree["truth"]) == {"edit_success", "target_l1"}
    assert (out / "validity.png").stat().st_size > 0 and "Hand-written reading: kept." in (out / "README.md").read_text()
    # identity (l1 to input 0) vs oracle (l1 to target 0): l1 to the input orders that pair backwards
    settings = pd.read_csv(out / "settings.csv").set_index("method")
    assert settings.loc["oracle", "rank_edit_success"] == 1 and settings.loc["identity", "rank_l1"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["n_rows"] == 16 and summary["meta"]["label"] == "tiny test world"
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bad = subprocess.run([sys.executable, "-m", "ip2p.cli", "validity", "--run", str(tmp_path / "nope"), "--analyse-only"],
                         cwd=repo, capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "nope" in lines[0], bad.stderr[-1000:]
