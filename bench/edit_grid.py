"""A PNG of a run's edits, one row per category: the input, every setting's output, the target.

The report's HTML grid shows the first items in order; this figure is the one to look at (and to
commit beside a report): the first item of each category, seed the run's lowest, columns in spec
order, the instruction beside each row, so that a reader sees at a glance which edits are right.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd


def edit_grid(run_dir: str | Path, df: pd.DataFrame, out_png: str | Path, *, per_category: int = 1,
              label_knobs: bool = True) -> Path | None:
    """Write ``out_png`` (the edits of ``per_category`` item(s) per category); None when no row has images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.aggregate import knob_label, settings_in_spec_order, varying_knobs
    from ip2p.errors import ImageReadError
    from ip2p.util.io import load_pil

    run_dir, out_png = Path(run_dir), Path(out_png)
    d = df[(df["seed"] == df["seed"].min()) & df["output_image"].notna()]
    if d.empty:
        return None
    items = d.drop_duplicates("item_id").sort_values("item_index")
    if items["category"].notna().any():
        items = items.groupby("category", sort=False).head(per_category)
    settings = settings_in_spec_order(d)
    vary = varying_knobs(df[["method", "knobs"]].drop_duplicates()) if label_knobs else {}
    has_target = "target_image" in d and d["target_image"].notna().any()
    out_by = {(r.item_id, r.method, r.knobs): r.output_image for r in d.itertuples()}
    heads = ["input"] + [f"{s.method}\n{knob_label(s.knobs, vary.get(s.method))}".strip() for s in settings]
    heads += ["target"] if has_target else []
    n_rows, n_cols = len(items), len(heads)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.05 * n_cols + 2.4, 1.1 * n_rows + 0.6), squeeze=False)
    for r, it in enumerate(items.itertuples()):
        paths = [it.input_image] + [out_by.get((it.item_id, s.method, s.knobs)) for s in settings]
        paths += [it.target_image] if has_target else []
        for c, rel in enumerate(paths):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            try:
                img = load_pil(run_dir / rel, what="stored image") if isinstance(rel, str) else None
            except ImageReadError:  # missing or corrupt: the report names it; here a mark in its cell
                img = None
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "-", ha="center", va="center", transform=ax.transAxes)
            if r == 0:
                ax.set_title(heads[c], fontsize=6)
        cat = f"[{it.category}]\n" if isinstance(it.category, str) else ""
        axes[r][0].set_ylabel(cat + textwrap.fill(str(it.instruction), 26), fontsize=6, rotation=0, ha="right",
                              va="center", labelpad=4)
    fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.2)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
