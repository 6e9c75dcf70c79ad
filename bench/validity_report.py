"""The validity report: tables (CSV), a figure and a README of which metric ranks world edits best
(``bench.validity`` computes the numbers)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.validity import ALL, TRUTHS

NAMES = {"clip_sim_direction": "CLIP directional", "clip_sim_image": "CLIP image", "clip_sim_1": "CLIP-T (output caption)",
         "dino_image": "DINO image", "lpips": "LPIPS to input", "l1": "L1 to input", "ssim": "SSIM to input",
         "edit_success": "edit success", "target_l1": "L1 to target"}


def _name(c: str) -> str:
    return NAMES.get(c, c)


def figure(agree: pd.DataFrame, settings: pd.DataFrame, out: Path) -> list[Path]:
    """Left: pairwise ranking accuracy per metric against each truth (95% intervals); right: each
    setting's mean CLIP directional similarity against its mean edit success."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    overall = agree[agree["category"] == ALL]
    metrics = list(dict.fromkeys(overall["metric"]))
    width = 0.8 / len(TRUTHS)
    for k, truth in enumerate(TRUTHS):
        sub = overall[overall["truth"] == truth].set_index("metric").loc[metrics]
        xs = [i + (k - (len(TRUTHS) - 1) / 2) * width for i in range(len(metrics))]
        err = [(sub["accuracy"] - sub["accuracy_lo"]).clip(lower=0), (sub["accuracy_hi"] - sub["accuracy"]).clip(lower=0)]
        ax.bar(xs, sub["accuracy"], width, yerr=err, capsize=2, label=f"vs {_name(truth)}")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([_name(m) for m in metrics], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pairwise ranking accuracy (edits of one item)")
    ax.set_title("Which metric orders edits as the truth does?")
    ax.legend(fontsize=8)
    if "clip_sim_direction" in settings:
        for method, g in settings.groupby("method", sort=False):
            bx.scatter(g["clip_sim_direction"], g["edit_success"], label=method, s=30)
        bx.set_xlabel("mean CLIP directional similarity")
        bx.set_ylabel("mean edit success (exact)")
        bx.set_title("Settings: CLIP directional vs the truth")
        bx.legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "validity.png", out / "validity.pdf"]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def _table(df: pd.DataFrame, cols: list[str], fmt: str = "{:.3f}") -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt.format(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def headline(agree: pd.DataFrame, taus: pd.DataFrame) -> dict[str, Any]:
    """The facts the README states, computed: best metric per truth, CLIP directional's figures."""
    overall = agree[agree["category"] == ALL]
    out: dict[str, Any] = {}
    for truth in TRUTHS:
        sub = overall[overall["truth"] == truth].sort_values("accuracy", ascending=False)
        out[f"best_vs_{truth}"] = sub.iloc[0][["metric", "accuracy", "accuracy_lo", "accuracy_hi"]].to_dict()
        d = sub[sub["metric"] == "clip_sim_direction"]
        if len(d):
            out[f"direction_vs_{truth}"] = d.iloc[0][["accuracy", "accuracy_lo", "accuracy_hi", "tau"]].to_dict()
        cats = agree[(agree["truth"] == truth) & (agree["metric"] == "clip_sim_direction") & (agree["category"] != ALL)]
        if len(cats):
            worst = cats.sort_values("accuracy").iloc[:3]
            out[f"direction_worst_categories_vs_{truth}"] = worst[["category", "accuracy", "n_pairs"]].to_dict("records")
    return out


def write_report(out: Path, agree: pd.DataFrame, settings: pd.DataFrame, taus: pd.DataFrame, meta: dict[str, Any],
                 notes: str = "") -> dict[str, Path]:
    """Write agreement.csv, settings.csv, system_tau.csv, validity.png/.pdf, summary.json, README.md."""
    from ip2p.util.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = {"agreement": out / "agreement.csv", "settings": out / "settings.csv", "system": out / "system_tau.csv"}
    agree.to_csv(paths["agreement"], index=False)
    settings.to_csv(paths["settings"], index=False)
    taus.to_csv(paths["system"], index=False)
    figure(agree, settings, out)
    facts = headline(agree, taus)
    atomic_write_json(out / "summary.json", {"meta": meta, "headline": facts})
    overall = agree[agree["category"] == ALL].copy()
    overall["metric"] = overall["metric"].map(_name)
    overall["truth"] = overall["truth"].map(_name)
    sys_t = taus.copy()
    sys_t["metric"], sys_t["truth"] = sys_t["metric"].map(_name), sys_t["truth"].map(_name)
    show = settings[["method", "knobs"] + [c for c in settings.columns if c.startswith("rank_")]].copy()
    show["knobs"] = show["knobs"].map(lambda k: " ".join(f"{a}={b}" for a, b in json.loads(k).items()
                                                         if a != "num_inference_steps") or "-")
    text = [f"# Metric validity on the small world\n", meta.get("label", ""), "",
            f"Run: `{meta.get('run')}`; {meta.get('n_rows')} edits ({meta.get('n_items')} items x "
            f"{meta.get('n_settings')} settings); bootstrap {meta.get('n_boot')} resamples of items; "
            f"command: `{meta.get('command')}`.", "", notes, "",
            "## Per item: does the metric order one item's edits as the truth does?", "",
            _table(overall, ["metric", "truth", "accuracy", "accuracy_lo", "accuracy_hi", "tau", "tau_lo", "tau_hi",
                             "n_items", "n_pairs"]), "",
            "Per category: `agreement.csv`. Figure: `validity.png`.", "",
            "## System level: ranking the settings", "",
            _table(sys_t, ["metric", "truth", "kendall_tau", "pairwise_accuracy", "n_settings"]), "",
            "Ranks of each setting (1 = best) by each metric and truth:", "",
            _table(show, list(show.columns), fmt="{:.0f}"), ""]
    atomic_write_text(out / "README.md", "\n".join(text))
    return paths


__all__ = ["write_report", "figure", "headline"]
