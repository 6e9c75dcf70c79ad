"""Aggregation of a run: mean and bootstrap 95% interval of every metric, per setting and per
category.

A setting is (method, knob values). Rows of one item with several seeds are averaged first, so
the bootstrap resamples items (the unit the test set samples), not seeds. The interval is the
percentile bootstrap: ``B`` resamples of the items with replacement, the 2.5% and 97.5% quantiles
of the resampled means. Its random generator is seeded from the setting's name, so the table is
reproducible and independent of the order of settings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ip2p.util.stats import bootstrap_ci  # noqa: F401  (part of this module's API)

ALL = "(all)"
_NOT_METRICS = {"seed", "height", "width", "item_index", "method_index", "setting_index"}
# preferred order for display; any other float column a metric suite adds is kept after these
METRIC_ORDER = (
    "clip_sim_direction", "clip_sim_image", "clip_sim_0", "clip_sim_1", "lpips", "l1", "l2", "psnr", "ssim",
    "target_l1", "target_lpips", "target_clip_image",
    "masked_l1_outside", "masked_psnr_outside", "masked_ssim_outside", "masked_lpips_outside",
)


def metric_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if c not in _NOT_METRICS and not c.startswith("knob_")
            and pd.api.types.is_float_dtype(df[c])]
    return sorted(cols, key=lambda c: (METRIC_ORDER.index(c) if c in METRIC_ORDER else len(METRIC_ORDER), c))


def _rng_for(*parts) -> np.random.Generator:
    h = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def aggregate(df: pd.DataFrame, *, n_boot: int = 1000, by_category: bool = True) -> pd.DataFrame:
    """One row per (method, knobs, category) with ``n_items`` and ``<metric>_mean/_lo/_hi``;
    ``category == "(all)"`` rows pool every item. Ordered as the settings appear in the spec."""
    if df.empty:
        return pd.DataFrame()
    metrics = metric_columns(df)
    knob_cols = [c for c in df.columns if c.startswith("knob_")]
    # one value per (setting, item): mean over seeds
    keys = ["method", "knobs", "item_id"]
    first = df.groupby(keys, sort=False).first()
    per_item = df.groupby(keys, sort=False)[metrics].mean()
    per_item = per_item.join(first[["category", "method_index", "setting_index", *knob_cols]]).reset_index()
    out = []
    cats = [ALL]
    if by_category and "category" in per_item and per_item["category"].notna().any():
        cats += sorted(str(c) for c in per_item["category"].dropna().unique())
    for (method, knobs), g in per_item.groupby(["method", "knobs"], sort=False):
        g = g.sort_values("item_id", kind="stable")  # resamples independent of the rows' order
        for cat in cats:
            sub = g if cat == ALL else g[g["category"].astype(str) == cat]
            if sub.empty:
                continue
            row = {"method": method, "knobs": knobs, "category": cat, "n_items": int(len(sub)),
                   "method_index": int(sub["method_index"].iloc[0]), "setting_index": int(sub["setting_index"].iloc[0])}
            for c in knob_cols:
                row[c] = sub[c].iloc[0]
            for m in metrics:
                mean, lo, hi = bootstrap_ci(sub[m].to_numpy(), n_boot=n_boot, rng=_rng_for(method, knobs, cat, m))
                row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"] = mean, lo, hi
            row.update(_judge_missing(df, method, knobs, cat))
            out.append(row)
    res = pd.DataFrame(out)
    res["_cat"] = (res["category"] != ALL).astype(int)
    res = res.sort_values(["_cat", "category", "method_index", "setting_index"], kind="stable").drop(columns="_cat")
    return res.reset_index(drop=True)


def _judge_missing(df: pd.DataFrame, method: str, knobs: str, cat: str) -> dict[str, int]:
    """``judge_missing_<reason>``: judge queries of a setting (and category) that gave no score,
    counted per reason (``ip2p.metrics.judge``); nothing when the run has no judge."""
    if "judge_status" not in df.columns:
        return {}
    from ip2p.metrics.judge.metric import missing_by_reason

    sel = (df["method"] == method) & (df["knobs"] == knobs)
    if cat != ALL:
        sel &= df["category"].astype(str) == cat
    counts = missing_by_reason(df.loc[sel, "judge_status"].tolist())
    return {f"judge_missing_{r}": int(n) for r, n in sorted(counts.items())}


def knob_label(knobs_json: str, varying: list[str] | None = None) -> str:
    """``sI=1.5 sT=7.5`` style label of a setting (only ``varying`` knobs when given)."""
    short = {"image_guidance_scale": "sI", "guidance_scale": "sT", "num_inference_steps": "steps"}
    k = json.loads(knobs_json)
    names = [n for n in k if varying is None or n in varying]
    return " ".join(f"{short.get(n, n)}={k[n]:g}" if isinstance(k[n], (int, float)) and not isinstance(k[n], bool)
                    else f"{short.get(n, n)}={k[n]}" for n in names) or "default"


def settings_in_spec_order(df: pd.DataFrame) -> list:
    """The run's settings (method_index, setting_index, method, knobs) as named tuples, in spec order."""
    cols = (df[["method_index", "setting_index", "method", "knobs"]].drop_duplicates()
            .sort_values(["method_index", "setting_index"]))
    return list(cols.itertuples(index=False))


def varying_knobs(agg: pd.DataFrame) -> dict[str, list[str]]:
    """method -> the knobs whose value differs between its settings (the ones worth showing)."""
    out = {}
    for method, g in agg.groupby("method", sort=False):
        ks = [json.loads(k) for k in g["knobs"].unique()]
        names = sorted({n for k in ks for n in k})
        out[method] = [n for n in names if len({json.dumps(k.get(n)) for k in ks}) > 1] or names
    return out


def write_aggregate(agg: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    from ip2p.util.io import atomic_write_bytes, atomic_write_text
    import io

    out_dir = Path(out_dir)
    buf = io.BytesIO()
    agg.to_parquet(buf, index=False)
    paths = {"csv": out_dir / "aggregate.csv", "parquet": out_dir / "aggregate.parquet"}
    atomic_write_text(paths["csv"], agg.to_csv(index=False))
    atomic_write_bytes(paths["parquet"], buf.getvalue())
    return paths


def print_table(agg: pd.DataFrame, *, metrics: list[str] | None = None, category: str | None = ALL, console=None,
                note: str | None = None) -> None:
    """A rich table of means and intervals (one category; ``None`` prints all); ``note`` (e.g.
    "partial: 8 of 12 units done") is added to its title."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if agg.empty:
        console.print("no results yet")
        return
    all_metrics = [c[:-5] for c in agg.columns if c.endswith("_mean")]
    default = [m for m in ("clip_sim_direction", "clip_sim_image", "l1", "lpips", "target_l1", "masked_l1_outside")
               if m in all_metrics][:4] or all_metrics[:4]
    metrics = [m for m in (metrics or default) if m in all_metrics]
    sub = agg if category is None else agg[agg["category"] == category]
    table = Table(title=f"mean [95% bootstrap interval]{'' if category is None else f', category {category}'}"
                  " (all metrics: aggregate.csv)" + (f" [{note}]" if note else ""))
    table.add_column("method")
    table.add_column("setting")
    if category is None:
        table.add_column("category")
    table.add_column("n", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    vary = varying_knobs(agg)
    for _, r in sub.iterrows():
        cells = [str(r["method"]), knob_label(r["knobs"], vary.get(r["method"]))]
        if category is None:
            cells.append(str(r["category"]))
        cells.append(str(r["n_items"]))
        for m in metrics:
            cells.append(f"{r[f'{m}_mean']:.3f} [{r[f'{m}_lo']:.3f},{r[f'{m}_hi']:.3f}]")
        table.add_row(*cells)
    console.print(table)


def sweep_end_differences(df: pd.DataFrame, curve_knobs: dict[str, str],
                          metrics: tuple[str, ...] = ("clip_sim_direction", "clip_sim_image"),
                          n_boot: int = 1000) -> pd.DataFrame:
    """Paired differences between the ends of each method's sweep: for every method whose curve knob
    (``curve_knobs``: method label -> knob) takes 2 or more values, each item's value at the largest
    knob value minus its value at the smallest (same item, seed and other knobs), then the mean and a
    bootstrap 95% interval over items. Marginal intervals of two settings can overlap while the paired
    difference is clearly away from 0: every setting of a sweep sees the same items and seeds."""
    out = []
    for method, knob in curve_knobs.items():
        col = f"knob_{knob}"
        d = df[df["method"] == method]
        if d.empty or col not in d.columns:
            continue
        values = sorted(pd.to_numeric(d[col], errors="coerce").dropna().unique())
        if len(values) < 2:
            continue
        lo_v, hi_v = values[0], values[-1]
        others = [c for c in d.columns if c.startswith("knob_") and c != col]
        keys = ["item_id", "seed", *others]
        a = d[pd.to_numeric(d[col], errors="coerce") == lo_v].set_index(keys)
        b = d[pd.to_numeric(d[col], errors="coerce") == hi_v].set_index(keys)
        joined = a.join(b, how="inner", lsuffix="_lo", rsuffix="_hi")
        for m in metrics:
            if f"{m}_lo" not in joined.columns:
                continue
            diff = (joined[f"{m}_hi"] - joined[f"{m}_lo"]).groupby(level="item_id").mean().to_numpy()
            mean, low, high = bootstrap_ci(diff, n_boot=n_boot, rng=np.random.default_rng(0))
            out.append({"method": method, "knob": knob, "from": lo_v, "to": hi_v, "metric": m,
                        "n_items": int(np.isfinite(diff).sum()), "mean_difference": mean, "ci_low": low, "ci_high": high,
                        "separated": bool(low > 0 or high < 0)})
    return pd.DataFrame(out)
