"""A benchmark run's tables (``<run>/benchmark/tables.csv``): one block per view of the result rows,
each the aggregate (mean, bootstrap 95% interval, ``n_items``) per setting and category, plus
``<metric>_n_missing`` (rows where the metric is NaN, e.g. text metrics of items without an output
caption). Which views a benchmark has is its record's ``views`` (``bench.benchmarks``):

- MagicBrush: ``per_turn`` (turn_1, independent/turn_N, iterative/turn_N), ``single_turn`` (turn 1
  and every independent turn: the official scorer's "all turn" pairs; with ``benchmark.single_turn:
  first`` only turn 1), ``multi_turn_final`` (each session's last iterative turn, or turn 1 for a
  one-turn session: the scorer's "final turn" pairs);
- Emu Edit and PIE-Bench: ``per_category`` (task / editing type);
- EditWorld: ``per_category`` (instruction category) and ``per_branch`` (text-to-image / video);
- other data sets: ``per_category``.
"""
from __future__ import annotations

import pandas as pd

BY_CATEGORY_VIEWS = ("per_turn", "per_category", "per_branch")  # the others pool their rows into one category


def view_tables(views: dict[str, pd.DataFrame], n_boot: int = 1000) -> pd.DataFrame:
    """Every view's aggregate in one frame, with a ``view`` column and ``<metric>_n_missing``."""
    from bench.aggregate import ALL, aggregate, metric_columns

    out = []
    for view, vdf in views.items():
        if vdf.empty:
            continue
        agg = aggregate(vdf, n_boot=n_boot, by_category=True)
        if view not in BY_CATEGORY_VIEWS:
            agg = agg[agg["category"] == ALL].assign(category=vdf["category"].iloc[0])
        metrics = metric_columns(vdf)
        miss = []
        for _, r in agg.iterrows():
            sub = vdf[(vdf["method"] == r["method"]) & (vdf["knobs"] == r["knobs"])]
            if r["category"] != ALL and r["category"] in set(vdf["category"].astype(str)):
                sub = sub[sub["category"].astype(str) == r["category"]]
            miss.append({f"{m}_n_missing": int(sub[m].isna().sum()) for m in metrics})
        agg = pd.concat([agg.reset_index(drop=True), pd.DataFrame(miss)], axis=1)
        agg.insert(0, "view", view)
        out.append(agg)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
