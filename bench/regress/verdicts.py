"""Verdicts of the regression gate: the run's rows paired with a golden's units and judged.

Per setting and gated metric, the worsening of each item

    w_i = new_i - golden_i  (lower is better)   or   golden_i - new_i  (higher is better)

averaged over seeds, and the percentile-bootstrap interval of its mean over items
(``bench.aggregate.bootstrap_ci``). REGRESSED when the whole interval lies above the metric's
tolerance, or when a value the golden has is now missing; improved when it lies below minus the
tolerance. Direction and default tolerance are declared with the metric (``ip2p.metrics.suite.COLUMNS``);
a suite's ``gate`` section may override them. A damaged golden value is a ``SpecError`` naming the
unit and the column, never a silent pass.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ip2p.errors import SpecError

from bench.aggregate import bootstrap_ci, knob_label, metric_columns
from bench.spec import GateSpec


@dataclass
class Verdict:
    """One (method, setting, metric) comparison; ``worse_*`` are in the metric's units, > 0 = worse."""

    method: str
    knobs: str
    setting: str
    metric: str
    better: str
    tolerance: float
    n_items: int
    golden_mean: float
    new_mean: float
    worse_mean: float
    worse_lo: float
    worse_hi: float
    newly_missing: int
    status: str  # "ok" | "improved" | "regressed"
    why: str = ""


def gated_metrics(gate: GateSpec, columns: Sequence[str]) -> list[str]:
    """The columns judged: the suite's list, or every column present that declares a direction."""
    from ip2p.metrics.suite import COLUMNS

    if gate.metrics:
        return list(gate.metrics)
    return [c for c in columns if c in COLUMNS and COLUMNS[c].better]


def _tolerance(gate: GateSpec, metric: str) -> float:
    from ip2p.metrics.suite import COLUMNS

    return float(gate.tolerance.get(metric, COLUMNS[metric].tolerance))


def _rng(*parts) -> np.random.Generator:
    import hashlib

    h = hashlib.sha256(json.dumps(["regress", *parts], default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _golden_value(unit: dict, metric: str, now: float, where: str) -> float:
    """A golden unit's value of a gated metric: a finite number, or null where this run has no value
    either (a metric that cannot be computed for the item). Anything else is a damaged golden:
    SpecError naming the unit and the column (the gate cannot judge against it)."""
    values = unit.get("values")
    if not isinstance(values, dict) or metric not in values:
        raise SpecError(f"{where}: the golden has no value of column {metric!r}; the golden file was edited or damaged "
                        "(remake it with --update-golden)")
    v = values[metric]
    if v is None:
        if math.isfinite(now):
            raise SpecError(f"{where}: column {metric!r} is null in the golden but this run has a value ({now:.6g}); "
                            "a golden value was removed (remake the golden with --update-golden)")
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: column {metric!r} is {json.dumps(v)} in the golden, not a finite number; the golden "
                        "file was edited or damaged (remake it with --update-golden)")
    return float(v)


def _golden_frame(golden: dict, df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The golden's units with their values of ``metrics``, each checked against this run's row."""
    key = ["method", "knobs", "item_id", "seed"]
    units = golden.get("units")
    if not isinstance(units, list) or not units:
        raise SpecError("the golden holds no units (its 'units' list is empty), so nothing would be compared; "
                        "remake it with --update-golden")
    now = {tuple(r[:4]): r[4:] for r in df[key + list(metrics)].itertuples(index=False, name=None)}
    rows = []
    for i, u in enumerate(units):
        if not isinstance(u, dict) or any(k not in u for k in key):
            raise SpecError(f"golden units[{i}]: not a unit with fields {key}; the golden file was edited or damaged")
        here = now.get((u["method"], u["knobs"], u["item_id"], u["seed"]))
        where = f"golden units[{i}] (method {u['method']!r}, item {u['item_id']!r}, seed {u['seed']})"
        rows.append({**{k: u[k] for k in key},
                     **{m: _golden_value(u, m, float("nan") if here is None else float(here[j]), where)
                        for j, m in enumerate(metrics)}})
    return pd.DataFrame(rows, columns=key + list(metrics))


def _gated_columns(golden: dict, df: pd.DataFrame, gate: GateSpec) -> list[str]:
    """The columns to judge: computed by this run (its metric spec) or named by the gate, each of them
    in the golden's column list; SpecError otherwise."""
    metrics = gated_metrics(gate, metric_columns(df))
    missing_cols = [m for m in metrics if m not in df.columns]
    if missing_cols:
        raise SpecError(f"gate.metrics: {missing_cols} are not computed by this suite (its columns: "
                        f"{metric_columns(df)}); add their group to metrics.compute or drop them from the gate")
    if not metrics:
        raise SpecError("the suite computes no gated metric column, so the gate would compare nothing")
    columns = golden.get("columns")
    not_in_golden = [m for m in metrics if not isinstance(columns, list) or m not in columns]
    if not_in_golden:
        raise SpecError(f"the golden's column list lacks {not_in_golden}, which this suite's metric spec computes and "
                        "gates; the golden file was edited or damaged (remake it with --update-golden)")
    return metrics


def judge(golden: dict, df: pd.DataFrame, gate: GateSpec) -> list[Verdict]:
    """Pair the run's rows with the golden's units and judge every (method, setting, gated metric).

    The gated columns are those this run computes under the suite's metric spec (or the gate's
    list), never the golden's column list: a column removed from the golden fails (SpecError),
    as do golden values that are NaN, ±Infinity, non-numbers, missing, or null where this run has a
    value, and any comparison that would pair no item. Nothing compared never reads as a pass."""
    from ip2p.metrics.suite import COLUMNS

    metrics = _gated_columns(golden, df, gate)
    gold = _golden_frame(golden, df, metrics)
    key = ["method", "knobs", "item_id", "seed"]
    merged = gold.merge(df[key + metrics], on=key, how="left", suffixes=("_golden", "_new"), indicator=True)
    absent = merged[merged["_merge"] != "both"]
    if len(absent):
        r = absent.iloc[0]
        raise SpecError(f"the run has no row for {len(absent)} golden unit(s), e.g. method {r['method']!r}, knobs "
                        f"{r['knobs']}, item {r['item_id']!r}, seed {r['seed']}; the sweep is incomplete")
    vary = {}
    for method, g in merged.groupby("method", sort=False):
        ks = [json.loads(k) for k in g["knobs"].unique()]
        vary[method] = [n for n in sorted({n for k in ks for n in k})
                        if len({json.dumps(k.get(n)) for k in ks}) > 1] or None
    out = []
    for (method, knobs), g in merged.groupby(["method", "knobs"], sort=False):
        for m in metrics:
            info = COLUMNS[m]
            sign = 1.0 if info.better == "lower" else -1.0
            gv = g[f"{m}_golden"].to_numpy(dtype=np.float64)
            nv = g[f"{m}_new"].to_numpy(dtype=np.float64)
            both = np.isfinite(gv) & np.isfinite(nv)
            newly_missing = int((np.isfinite(gv) & ~np.isfinite(nv)).sum())
            worse = pd.Series(np.where(both, sign * (nv - gv), np.nan), index=g.index)
            per_item = worse.groupby(g["item_id"]).mean().sort_index()  # mean over seeds; items resampled
            mean, lo, hi = bootstrap_ci(per_item.to_numpy(), n_boot=gate.n_boot, level=gate.level,
                                        rng=_rng(method, knobs, m))
            tol = _tolerance(gate, m)
            status, why = "ok", ""
            if newly_missing:
                status, why = "regressed", f"{newly_missing} value(s) the golden has are missing now"
            elif np.isfinite(lo) and lo > tol:
                status, why = "regressed", f"worse by {mean:.4g} [{lo:.4g}, {hi:.4g}] > tolerance {tol:g}"
            elif np.isfinite(hi) and hi < -tol:
                status, why = "improved", f"better by {-mean:.4g} [{-hi:.4g}, {-lo:.4g}] > tolerance {tol:g}"
            out.append(Verdict(method, knobs, knob_label(knobs, vary[method]), m, info.better, tol,
                               int(np.isfinite(per_item.to_numpy()).sum()), float(np.nanmean(gv)) if np.isfinite(gv).any()
                               else float("nan"), float(np.nanmean(nv)) if np.isfinite(nv).any() else float("nan"),
                               mean, lo, hi, newly_missing, status, why))
    empty = [v for v in out if v.n_items == 0 and not v.newly_missing]
    if empty:
        names = ", ".join(f"{v.metric} [{v.method} {v.setting}]" for v in empty[:4])
        raise SpecError(f"{len(empty)} comparison(s) paired no item with a value on both sides ({names}); the gate "
                        "cannot judge what it did not compare (drop those columns with gate.metrics, or remake the "
                        "golden)")
    return out
