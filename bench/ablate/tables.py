"""An ablation's tables: one row per model (its data and mean similarities over its curve), and the
paper's questions as paired differences between variants over the test items."""
from __future__ import annotations

from pathlib import Path

from bench.ablate.spec import VariantSpec


def ablation_table(agg, variants, data, pool_report, timings, references: dict[str, str] | None = None) -> list[dict]:
    """One row per model: its data, and the mean CLIP directional / image similarity over its curve
    (``references``: label -> model of the reference curves, shown as their model)."""
    from bench.aggregate import ALL

    sub = agg[agg["category"] == ALL]
    out = []
    info = {v.name: v for v in variants}
    for label, g in sub.groupby("method", sort=False):
        v = info.get(label)
        out.append({
            "model": label,
            "source": v.source if v else (f"(reference: {references[label]})" if label in (references or {})
                                          else "(base model)"),
            "pairs": data[label][2] if v else None,
            "filter": (v.filter if v.source == "generated" else None) if v else None,
            "train_s": timings.get(f"train:{label}"),
            "clip_sim_direction": round(float(g["clip_sim_direction_mean"].mean()), 4),
            "clip_sim_image": round(float(g["clip_sim_image_mean"].mean()), 4),
            "points": len(g),
            **({"target_l1": round(float(g["target_l1_mean"].mean()), 4)} if "target_l1_mean" in g else {}),
            **({"edit_success": round(float(g["edit_success_mean"].mean()), 4)} if "edit_success_mean" in g else {}),
        })
    return out


def comparisons(variants: list[VariantSpec]) -> list[tuple[str, str, str]]:
    """(question, model a, model b) pairs the paper asks about, for the variants present: filter off
    minus on at each size, and each generated size minus the next smaller one (same filter state)."""
    gen = [v for v in variants if v.source == "generated"]
    out = []
    by = {(v.size, v.filter): v.name for v in gen}
    for size in sorted({v.size for v in gen}):
        if (size, True) in by and (size, False) in by:
            out.append((f"no filter vs filter, {size} pairs", by[(size, False)], by[(size, True)]))
    for flt in (True, False):
        sizes = sorted(s for s, f in by if f == flt)
        for small, large in zip(sizes, sizes[1:]):
            out.append((f"{large} vs {small} pairs, filter {'on' if flt else 'off'}", by[(large, flt)], by[(small, flt)]))
    return out


PAIRED_METRICS = ("clip_sim_direction", "clip_sim_image", "edit_success", "target_l1")


def paired_differences(df, pairs: list[tuple[str, str, str]], metrics=PAIRED_METRICS) -> list[dict]:
    """Mean of ``a - b`` per metric with a bootstrap 95% interval over test items: both models see the
    same items, seeds and settings, so each item's difference (averaged over the settings) is paired.
    Metrics the sweep did not compute (the world's edit success and L1 to the exact target need its
    truth) are left out."""
    from bench.aggregate import _rng_for, bootstrap_ci

    rows = []
    for question, a, b in pairs:
        row = {"question": question, "a": a, "b": b}
        for m in metrics:
            if m not in df:
                continue
            per = df[df["method"].isin([a, b])].pivot_table(index=["item_id", "seed", "setting_index"],
                                                            columns="method", values=m)
            if a not in per or b not in per:
                continue
            diff = (per[a] - per[b]).groupby(level="item_id").mean().to_numpy()
            mean, lo, hi = bootstrap_ci(diff, rng=_rng_for("paired", question, m))
            row[m] = f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        rows.append(row)
    return rows


def _write_table(rows: list[dict], out: Path) -> None:
    import pandas as pd

    from ip2p.util.io import atomic_write_text

    df = pd.DataFrame(rows)
    atomic_write_text(out / "ablation_table.csv", df.to_csv(index=False))
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    atomic_write_text(out / "ablation_table.md", "\n".join(lines) + "\n\nclip_sim_direction / clip_sim_image: mean over "
                      "the curve's settings (the sweep's grid); per-setting values with 95% intervals in aggregate.csv.\n")


def _write_paired(rows: list[dict], out: Path, n_items: int) -> None:
    from ip2p.util.io import atomic_write_text

    metrics = [m for m in PAIRED_METRICS if any(m in r for r in rows)]
    lines = ["| question | a | b | " + " | ".join(f"{m} a - b" for m in metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for r in rows:
        lines.append(f"| {r['question']} | {r['a']} | {r['b']} | " + " | ".join(r.get(m, "") for m in metrics) + " |")
    atomic_write_text(out / "ablation_paired.md", "\n".join(lines) + f"\n\nMean paired difference over {n_items} test "
                      "items (each item averaged over the sweep's settings), bootstrap 95% interval over items.\n")
