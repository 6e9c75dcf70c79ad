"""Aggregation (means, bootstrap intervals, per category, seeds averaged per item) and the figure."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.aggregate import ALL, aggregate, bootstrap_ci
from bench.plot import curves, plot_tradeoff


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits, trials = 0, 300
    for _ in range(trials):
        x = rng.exponential(1.0, size=60)  # skewed, true mean 1
        mean, lo, hi = bootstrap_ci(x, n_boot=400, rng=rng)
        assert lo <= mean <= hi
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_interval_shrinks_with_n_and_ignores_nan():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(size=20))
    large = bootstrap_ci(rng.normal(size=2000))
    assert (large[2] - large[1]) < (small[2] - small[1]) / 5
    m, lo, hi = bootstrap_ci(np.array([1.0, np.nan, 3.0]))
    assert m == 2.0 and 1.0 <= lo <= hi <= 3.0
    assert np.isnan(bootstrap_ci(np.array([np.nan]))[0])


def _rows():
    """2 sT x 3 sI settings, 12 items in 2 categories, 2 seeds per item; the metrics are a known
    function of the knobs plus item noise."""
    rng = np.random.default_rng(0)
    rows = []
    for si_t, st in enumerate([3.0, 7.5]):
        for si_i, si in enumerate([1.0, 1.5, 2.0]):
            knobs = json.dumps({"guidance_scale": st, "image_guidance_scale": si}, sort_keys=True, separators=(",", ":"))
            for it in range(12):
                for seed in (0, 1):
                    rows.append({
                        "unit_key": f"{st}-{si}-{it}-{seed}", "method": "instructpix2pix", "knobs": knobs,
                        "method_index": 0, "setting_index": si_t * 3 + si_i, "item_id": f"i{it}", "item_index": it,
                        "seed": seed, "category": "add" if it % 2 else "remove",
                        "knob_guidance_scale": st, "knob_image_guidance_scale": si,
                        "clip_sim_direction": 0.3 - 0.1 * si + 0.01 * st + rng.normal(0, 0.02),
                        "clip_sim_image": 0.5 + 0.2 * si + rng.normal(0, 0.02),
                        "l1": 1.0 * it + seed,  # per-item mean: it + 0.5
                    })
    return pd.DataFrame(rows)


def test_aggregate_means_per_setting_and_category():
    df = _rows()
    agg = aggregate(df, n_boot=300)
    overall = agg[agg["category"] == ALL]
    assert len(overall) == 6 and set(agg["category"]) == {ALL, "add", "remove"}
    assert (overall["n_items"] == 12).all()  # items, not rows: the two seeds are averaged first
    for _, r in overall.iterrows():
        g = df[df["knobs"] == r["knobs"]]
        for m in ("clip_sim_direction", "clip_sim_image", "l1"):
            assert r[f"{m}_mean"] == pytest.approx(g[m].mean(), abs=1e-12)
            assert r[f"{m}_lo"] <= r[f"{m}_mean"] <= r[f"{m}_hi"]
    add = agg[(agg["category"] == "add")]
    assert (add["n_items"] == 6).all()
    assert add["l1_mean"].iloc[0] == pytest.approx(np.mean([it + 0.5 for it in range(1, 12, 2)]))
    # reproducible: same table twice, whatever the row order
    again = aggregate(df.sample(frac=1.0, random_state=3), n_boot=300)
    pd.testing.assert_frame_equal(agg, again)


def test_figure_has_one_curve_per_st_sorted_by_si(tmp_path):
    agg = aggregate(_rows(), n_boot=200)
    cv = curves(agg, {"instructpix2pix": "instructpix2pix"})
    assert [c["label"] for c in cv] == ["instructpix2pix sT=3", "instructpix2pix sT=7.5"]
    assert all(c["knob"] == "image_guidance_scale" for c in cv)
    assert all(list(c["points"]["_v"]) == [1.0, 1.5, 2.0] for c in cv)
    # raising sI raises image similarity in these rows; the curve shows it
    assert all(c["points"]["clip_sim_image_mean"].is_monotonic_increasing for c in cv)
    paths = plot_tradeoff(agg, tmp_path / "fig")
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    with Image.open(paths["png"]) as im:
        assert im.size[0] > 500 and im.size[1] > 400
    by_cat = plot_tradeoff(agg, tmp_path / "fig_add", category="add")
    assert by_cat["png"].stat().st_size > 1000


def test_sweep_end_differences_are_paired_per_item():
    """Items differ far more than settings: the per-setting intervals overlap, the paired one does not."""
    import numpy as np
    import pandas as pd

    from bench.aggregate import sweep_end_differences

    rng = np.random.default_rng(0)
    base = rng.normal(0, 1.0, size=50)  # large spread between items
    rows = []
    for s_i, shift in ((1.0, 0.0), (2.0, 0.05), (5.0, 0.1)):
        for k, b in enumerate(base):
            rows.append({"method": "m", "item_id": f"i{k}", "seed": 0, "knob_image_guidance_scale": s_i,
                         "knob_guidance_scale": 7.5, "clip_sim_image": b + shift + rng.normal(0, 0.01)})
    df = pd.DataFrame(rows)
    ends = sweep_end_differences(df, {"m": "image_guidance_scale"}, metrics=("clip_sim_image",))
    assert len(ends) == 1
    r = ends.iloc[0]
    assert (r["from"], r["to"], r["n_items"]) == (1.0, 5.0, 50)
    assert abs(r["mean_difference"] - 0.1) < 0.01 and r["separated"] and r["ci_low"] > 0.09
    # unpaired, the two ends' intervals overlap (the spread between items is 10x the effect)
    lo = df[df.knob_image_guidance_scale == 1.0].clip_sim_image
    hi = df[df.knob_image_guidance_scale == 5.0].clip_sim_image
    assert hi.mean() - 2 * hi.std() / np.sqrt(50) < lo.mean() + 2 * lo.std() / np.sqrt(50)
