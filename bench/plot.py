"""The paper's figure: CLIP image similarity against CLIP directional similarity.

x = mean ``clip_sim_direction`` (how well the change follows the caption change), y = mean
``clip_sim_image`` (how much of the input survives). One curve per method and per value of its
other swept knobs (e.g. one per sT for InstructPix2Pix); along a curve the method's curve knob
varies (sI for InstructPix2Pix, as registered in ``ip2p.registry``), and each point is labelled
with its value. Error bars are the bootstrap 95% intervals of both means. Written as PDF and PNG.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.aggregate import ALL, knob_label

X, Y = "clip_sim_direction", "clip_sim_image"
_SHORT = {"image_guidance_scale": "sI", "guidance_scale": "sT", "num_inference_steps": "steps"}


def curve_knob_of(method_name: str | None, varying: list[str], counts: dict[str, int]) -> str | None:
    """The knob along a method's curve: its registered curve knob when swept, else the swept knob
    with the most values."""
    if not varying:
        return None
    if method_name:
        try:
            from ip2p.registry import get_method

            ck = get_method(method_name).curve_knob
            if ck in varying:
                return ck
        except Exception:
            pass
    return max(varying, key=lambda k: (counts[k], k))


def curves(agg: pd.DataFrame, method_names: dict[str, str] | None = None, category: str = ALL) -> list[dict]:
    """The curves of the figure: [{label, method, knob, points: DataFrame sorted by the knob}]."""
    sub = agg[agg["category"] == category]
    out = []
    for method, g in sub.groupby("method", sort=False):
        knobs = g["knobs"].map(json.loads)
        names = sorted({k for d in knobs for k in d})
        counts = {k: len({json.dumps(d.get(k)) for d in knobs}) for k in names}
        varying = [k for k in names if counts[k] > 1]
        ck = curve_knob_of((method_names or {}).get(method), varying, counts)
        others = [k for k in varying if k != ck]
        g = g.assign(_k=knobs)
        keyf = (lambda d: tuple(json.dumps(d.get(k)) for k in others))
        for okey, cg in g.groupby(g["_k"].map(keyf), sort=False):
            if ck is not None:
                cg = cg.assign(_v=cg["_k"].map(lambda d: d.get(ck))).sort_values("_v")
            label = method
            if others:
                label += " " + knob_label(cg["knobs"].iloc[0], others)
            out.append({"label": label, "method": method, "knob": ck, "points": cg})
    return out


def plot_tradeoff(agg: pd.DataFrame, out_base: str | Path, *, method_names: dict[str, str] | None = None,
                  category: str = ALL, title: str | None = None, note: str | None = None) -> dict[str, Path]:
    """Draw the figure from an aggregate table; writes ``<out_base>.pdf`` and ``.png``. ``note``
    (e.g. "partial: 8 of 12 units done") is shown under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ip2p.util.io import atomic_write_bytes

    from ip2p.errors import SpecError

    if agg.empty or category not in set(agg["category"]):
        known = ", ".join(dict.fromkeys(agg["category"])) if not agg.empty else "(none)"
        raise SpecError(f"category {category!r}: no results in this run; its categories are {known}")
    for c in (X, Y):
        if f"{c}_mean" not in agg.columns:
            raise SpecError(f"the run has no {c!r} column; the figure needs the CLIP metrics "
                            "(add clip to metrics.compute in the spec)")
    fig, ax = plt.subplots(figsize=(6.0, 4.6), dpi=150)
    markers = "osD^vP*X"
    for i, cv in enumerate(curves(agg, method_names, category)):
        p = cv["points"]
        x, y = p[f"{X}_mean"].to_numpy(), p[f"{Y}_mean"].to_numpy()
        xerr = [x - p[f"{X}_lo"].to_numpy(), p[f"{X}_hi"].to_numpy() - x]
        yerr = [y - p[f"{Y}_lo"].to_numpy(), p[f"{Y}_hi"].to_numpy() - y]
        line = ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker=markers[i % len(markers)], ms=4, lw=1.2,
                           elinewidth=0.7, capsize=2, label=cv["label"])
        if cv["knob"] is not None:
            for xi, yi, v in zip(x, y, p["_v"]):
                ax.annotate(f"{_SHORT.get(cv['knob'], cv['knob'])}={v:g}" if isinstance(v, (int, float)) else str(v),
                            (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=6,
                            color=line[0].get_color())
    ax.set_xlabel("CLIP text-image direction similarity")
    ax.set_ylabel("CLIP image similarity")
    n = int(agg[agg["category"] == category]["n_items"].max())
    ax.set_title((title or f"Image consistency vs. edit direction ({n} items{'' if category == ALL else ', ' + category})")
                 + (f"\n{note}" if note else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out_base = Path(out_base)
    paths = {}
    import io

    for ext in ("pdf", "png"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, metadata={"CreationDate": None} if ext == "pdf" else None)
        paths[ext] = atomic_write_bytes(out_base.with_suffix(f".{ext}"), buf.getvalue())
    plt.close(fig)
    return paths


def method_names_of(run_dir: str | Path) -> dict[str, str]:
    """label -> registry name, from the run's recorded spec."""
    from ip2p.util.io import read_json_or

    spec = read_json_or(Path(run_dir) / "spec.json", {}).get("spec")
    try:
        return {(m.get("label") or m["name"]): m["name"] for m in spec["methods"]}
    except (TypeError, KeyError, AttributeError):  # no or a damaged spec.json: no method names
        return {}
