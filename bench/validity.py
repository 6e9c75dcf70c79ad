"""How well does each metric rank edits? Agreement of every metric column of a world sweep with the
world's truth: the exact edit success (``edit_success``) and the L1 to the exact target
(``target_l1``), over edits of varied quality (every method and setting, oracle and identity
included).

Per item: the edits of one item (all settings, one seed) are compared in pairs. A pair counts when
the truth orders it (a tie in the truth is no evidence); the metric agrees when it orders the pair
the same way, each oriented by its declared better direction (``ip2p.metrics.suite.COLUMNS``), a
metric tie counting one half. Reported: the pairwise ranking accuracy (pooled over pairs), and the
mean over items of Kendall's tau-b between metric and truth, each with a percentile bootstrap
interval over items; overall and per category. At the system level: each setting's mean metric
and mean truth, and Kendall's tau-b between the two rankings of the settings.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

ALL = "(all)"
TRUTHS = ("edit_success", "target_l1")
# the harness's metrics a paper would report, in display order; any present judge column joins
CANDIDATES = ("clip_sim_direction", "clip_sim_image", "clip_sim_1", "dino_image", "lpips", "l1", "ssim",
              "viescore_o", "viescore_sc", "gedit_o", "imgedit_overall", "imgedit_adherence")


def orientation(column: str) -> float:
    """+1 when higher is better, -1 when lower is (``COLUMNS``); ValueError for an undirected column."""
    from ip2p.metrics.suite import COLUMNS

    info = COLUMNS.get(column)
    if info is None or info.better is None:
        raise ValueError(f"{column}: not a metric column with a declared better direction")
    return 1.0 if info.better == "higher" else -1.0


def validity_spec(items: int = 192, steps: int = 20, judge: dict[str, Any] | None = None,
                  lpips: bool | None = None, dino: bool = False) -> dict[str, Any]:
    """The validity sweep: the baselines suite's methods and settings (InstructPix2Pix sI sweep,
    with and without post-edit, SDEdit strengths, Text2Live iterations, identity, oracle) on
    ``items`` world test items, with the metric groups the analysis needs (and a judge if given)."""
    from bench.spec import load_spec

    base = load_spec("baselines").to_dict()
    data = {"name": "validity", "description": f"Metric validity on the world: baselines' methods on {items} items",
            "dataset": {"kind": "world", "split": "test", "limit": int(items)}, "methods": [],
            "metrics": {"compute": ["clip", "pixel", "target", "masked", "success"], "clip": base["metrics"]["clip"]},
            "seeds": [0], "batch_size": 16}
    for m in base["methods"]:
        entry = {k: m[k] for k in ("name", "model", "knobs", "grid") if m.get(k)}
        if "num_inference_steps" in entry.get("knobs", {}):
            entry["knobs"] = {**entry["knobs"], "num_inference_steps": int(steps)}
        data["methods"].append(entry)
    if lpips is None:
        from ip2p.metrics.lpips_metric import backbone_file

        lpips = backbone_file("alex").exists()
    if lpips:
        data["metrics"]["compute"].append("lpips")
    if dino:
        data["metrics"]["compute"].append("dino")
    if judge:
        data["metrics"]["compute"].append("judge")
        data["metrics"]["judge"] = dict(judge)
    return data


def _pairs(m: np.ndarray, t: np.ndarray) -> tuple[float, int, float]:
    """(agreeing pairs, pairs the truth orders, Kendall tau-b) of one item's edits."""
    ok = np.isfinite(m) & np.isfinite(t)
    m, t = m[ok], t[ok]
    if len(m) < 2:
        return 0.0, 0, math.nan
    i, j = np.triu_indices(len(m), 1)
    dm, dt = np.sign(m[i] - m[j]), np.sign(t[i] - t[j])
    ordered = dt != 0
    agree = float(((dm == dt) + 0.5 * (dm == 0))[ordered].sum())
    nm, nt = int((dm != 0).sum()), int(ordered.sum())
    tau = float((dm * dt).sum() / math.sqrt(nm * nt)) if nm and nt else math.nan
    return agree, nt, tau


def item_table(df: pd.DataFrame, metric: str, truth: str) -> pd.DataFrame:
    """One row per (item, seed): category, agreeing pairs, ordered pairs, Kendall tau-b."""
    sm, st = orientation(metric), orientation(truth)
    rows = []
    for (item, seed), g in df.groupby(["item_id", "seed"], sort=True):
        agree, n, tau = _pairs(sm * g[metric].to_numpy(float), st * g[truth].to_numpy(float))
        rows.append({"item_id": item, "seed": seed, "category": g["category"].iloc[0], "agree": agree,
                     "pairs": n, "tau": tau})
    return pd.DataFrame(rows)


def summarize(tab: pd.DataFrame, n_boot: int, rng: np.random.Generator, level: float = 0.95) -> dict[str, float]:
    """Pairwise accuracy and mean tau with bootstrap intervals over the items of ``tab``."""
    agree, pairs, tau = (tab[c].to_numpy(float) for c in ("agree", "pairs", "tau"))
    out = {"n_items": int(len(tab)), "n_pairs": int(pairs.sum())}
    if not len(tab) or pairs.sum() == 0:
        return {**out, **{k: math.nan for k in ("accuracy", "accuracy_lo", "accuracy_hi", "tau", "tau_lo", "tau_hi")}}
    idx = rng.integers(0, len(tab), size=(n_boot, len(tab)))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_b = agree[idx].sum(1) / pairs[idx].sum(1)
        tau_b = np.nanmean(np.where(np.isfinite(tau[idx]), tau[idx], np.nan), axis=1) if np.isfinite(tau).any() \
            else np.full(n_boot, np.nan)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    acc_lo, acc_hi = np.nanpercentile(acc_b, q)
    tau_mean = float(np.nanmean(tau)) if np.isfinite(tau).any() else math.nan
    tau_lo, tau_hi = np.nanpercentile(tau_b, q) if np.isfinite(tau_b).any() else (math.nan, math.nan)
    return {**out, "accuracy": float(agree.sum() / pairs.sum()), "accuracy_lo": float(acc_lo),
            "accuracy_hi": float(acc_hi), "tau": tau_mean, "tau_lo": float(tau_lo), "tau_hi": float(tau_hi)}


def metrics_present(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[str]:
    """The candidate (or given) metrics the run has values for."""
    names = list(metrics) if metrics else [c for c in CANDIDATES if c in df.columns]
    return [c for c in names if c in df.columns and df[c].notna().any()]


def complete_items(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the (item, seed) pairs every setting has: a run whose item limit changed, or a
    method with its own limit, would otherwise compare items on different sets of edits."""
    n_settings = df.groupby(["method", "knobs"], sort=False).ngroups
    counts = df.groupby(["item_id", "seed"])["knobs"].transform(lambda s: len(set(zip(df.loc[s.index, "method"], s))))
    return df[counts == n_settings]


def check_truth(df: pd.DataFrame, where: str) -> None:
    from ip2p.errors import SpecError

    missing = [t for t in TRUTHS if t not in df.columns or df[t].isna().all()]
    if missing:
        raise SpecError(f"{where}: the rows have no {missing}; validity needs a world sweep with the metric groups "
                        "'target' and 'success' (see `ip2p validity --help`)")


def agreement(df: pd.DataFrame, metrics: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per metric x truth x category (``(all)`` first): pairwise accuracy and tau with intervals."""
    rows = []
    for truth in TRUTHS:
        for metric in metrics:
            tab = item_table(df, metric, truth)
            cats = [ALL] + sorted(str(c) for c in tab["category"].dropna().unique())
            for cat in cats:
                sub = tab if cat == ALL else tab[tab["category"].astype(str) == cat]
                rng = np.random.default_rng([seed, len(rows)])
                rows.append({"metric": metric, "truth": truth, "category": cat, **summarize(sub, n_boot, rng)})
    return pd.DataFrame(rows)


def system_level(df: pd.DataFrame, metrics: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(settings table: method, knobs, mean of every metric and truth, ranks; Kendall tau-b of each
    metric's ranking of the settings against each truth's)."""
    cols = list(metrics) + list(TRUTHS)
    per_item = df.groupby(["method", "knobs", "item_id"], sort=False)[cols].mean()
    settings = per_item.groupby(["method", "knobs"], sort=False).mean().reset_index()
    taus = []
    for truth in TRUTHS:
        t = orientation(truth) * settings[truth].to_numpy(float)
        for metric in metrics:
            agree, n, tau = _pairs(orientation(metric) * settings[metric].to_numpy(float), t)
            taus.append({"metric": metric, "truth": truth, "kendall_tau": tau,
                         "pairwise_accuracy": agree / n if n else math.nan, "n_settings": int(len(settings))})
    for c in cols:
        settings[f"rank_{c}"] = (orientation(c) * settings[c]).rank(ascending=False, method="min")
    return settings, pd.DataFrame(taus)


def load_judge_section(path: str | Path | None) -> dict[str, Any] | None:
    """A judge section (the fields of ``metrics.judge``) from a YAML file, validated."""
    if path is None:
        return None
    from bench.spec import JudgeMetricSpec
    from ip2p.errors import SpecError

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"--judge {path}: file not found (a YAML mapping of metrics.judge fields)")
    data = yaml.safe_load(p.read_text())
    if isinstance(data, dict) and "judge" in data:
        data = data["judge"]
    try:
        return JudgeMetricSpec.model_validate(data).model_dump(mode="json")
    except Exception as e:
        raise SpecError(f"--judge {path}: {e}") from None


__all__ = ["validity_spec", "agreement", "system_level", "item_table", "summarize", "metrics_present", "TRUTHS",
           "check_truth", "orientation", "load_judge_section", "complete_items"]
