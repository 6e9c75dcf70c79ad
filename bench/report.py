"""One self-contained HTML report of a run: spec, manifest, aggregate tables, the figure and image
grids (input, instruction, outputs across settings, target). Every image is embedded as a base64
data URI and the page loads nothing from anywhere else, so it opens offline and can be mailed.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd

from bench.aggregate import ALL, knob_label, settings_in_spec_order, varying_knobs

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:10px}
pre{background:#f7f7f7;padding:8px;font-size:11px;overflow-x:auto}
.grid img{width:96px;height:auto;image-rendering:pixelated;display:block}
.grid td{text-align:center;font-size:10px}.grid td.text{text-align:left;max-width:220px}
.fig{max-width:720px;width:100%}
.warn{background:#fff4e0;border:1px solid #e0a040;padding:6px}td.bad{color:#a00;font-size:9px;max-width:120px;word-break:break-all}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_uri(path: Path, max_side: int) -> str | None:
    """A stored image as a data URI, shrunk to ``max_side`` pixels at most (thumbnails); None
    when the file is missing or cannot be decoded."""
    from PIL import Image

    from ip2p.errors import ImageReadError
    from ip2p.util.io import load_pil

    try:
        im = load_pil(path, what="stored image")
    except ImageReadError:
        return None
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return _data_uri(buf.getvalue())


def _table(agg: pd.DataFrame, category: str, metrics: list[str], table_id: str) -> str:
    sub = agg[agg["category"] == category]
    vary = varying_knobs(agg)
    head = "".join(f"<th>{_e(m)}</th>" for m in ["method", "setting", "n", *metrics])
    rows = []
    for _, r in sub.iterrows():
        cells = [f"<td>{_e(r['method'])}</td>", f"<td>{_e(knob_label(r['knobs'], vary.get(r['method'])))}</td>",
                 f"<td class='num'>{int(r['n_items'])}</td>"]
        for m in metrics:
            mean, lo, hi = r[f"{m}_mean"], r[f"{m}_lo"], r[f"{m}_hi"]
            cells.append(f"<td class='num' data-metric='{_e(m)}'><span class='mean'>{mean:.4f}</span><br>"
                         f"<span class='ci'>[{lo:.4f}, {hi:.4f}]</span></td>")
        rows.append(f"<tr data-method='{_e(r['method'])}' data-knobs='{_e(r['knobs'])}'>{''.join(cells)}</tr>")
    return f"<table id='{_e(table_id)}'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _grid(run_dir: Path, df: pd.DataFrame, n_items: int, max_side: int, bad_files: dict[str, str] | None = None) -> str:
    settings = settings_in_spec_order(df)
    seed0 = df["seed"].min()
    d = df[df["seed"] == seed0]
    items = d.drop_duplicates("item_id").sort_values("item_index").head(n_items)
    has_target = d["target_image"].notna().any() if "target_image" in d else False
    vary = varying_knobs(df[["method", "knobs"]].drop_duplicates())
    head = "<th>input</th><th>instruction</th>" + "".join(
        f"<th>{_e(s.method)}<br>{_e(knob_label(s.knobs, vary.get(s.method)))}</th>" for s in settings)
    if has_target:
        head += "<th>target</th>"
    out_by = {(r.item_id, r.method, r.knobs): r.output_image for r in d.itertuples()}
    cache: dict[str, str | None] = {}

    bad_files = bad_files or {}

    def img(rel) -> str:
        if not isinstance(rel, str):
            return "<td>-</td>"
        if rel in bad_files:
            return f"<td class='bad' title='{_e(bad_files[rel])}'>corrupt or missing:<br>{_e(rel)}</td>"
        if rel not in cache:
            cache[rel] = _image_uri(run_dir / rel, max_side)
        uri = cache[rel]
        return f"<td><img src='{uri}' alt='{_e(rel)}'></td>" if uri else f"<td class='bad'>missing:<br>{_e(rel)}</td>"

    rows = []
    for it in items.itertuples():
        cat = f"<br><i>{_e(it.category)}</i>" if isinstance(it.category, str) else ""
        text = (f"<td class='text'><b>{_e(it.instruction)}</b><br>{_e(it.input_caption)} &rarr; "
                f"{_e(it.output_caption)}{cat}<br><small>{_e(it.item_id)}</small></td>")
        cells = [img(it.input_image), text]
        cells += [img(out_by.get((it.item_id, s.method, s.knobs))) for s in settings]
        if has_target:
            cells.append(img(it.target_image))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table class='grid'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _sweep_ends(ends: pd.DataFrame) -> str:
    """A table of each method's paired difference between the ends of its curve (``curve_sweep_ends``)."""
    if ends.empty:
        return ""
    rows = "".join(
        f"<tr><td>{_e(r.method)}</td><td>{_e(r.knob)} {r._3:g} &rarr; {r.to:g}</td><td>{_e(r.metric)}</td>"
        f"<td>{r.n_items}</td><td>{r.mean_difference:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]</td>"
        f"<td>{'yes' if r.separated else 'no'}</td></tr>" for r in ends.itertuples())
    return ("<p>Each item's value at the sweep's last setting minus its value at the first (same item and seed), "
            "mean and bootstrap 95% interval over items: the per-setting intervals above overlap where items "
            "differ more than settings, the paired difference does not.</p><table id='sweep-ends'><tr><th>method</th>"
            "<th>sweep</th><th>metric</th><th>n</th><th>last - first</th><th>interval excludes 0</th></tr>"
            + rows + "</table>")


def build_report(run_dir: str | Path, out: str | Path | None = None, *, agg: pd.DataFrame | None = None,
                 figure_png: str | Path | None = None, n_items: int = 8, max_side: int = 256,
                 ends: pd.DataFrame | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``<run>/report.html``); ``agg`` and ``ends``
    (``bench.sweep_ends.curve_sweep_ends``) when the caller has them already."""
    from bench.aggregate import aggregate, metric_columns
    from bench.store import bad_stored_images, current_rows, load_results, run_state
    from ip2p.errors import SpecError
    from ip2p.util.io import atomic_write_text, read_json_or

    run_dir = Path(run_dir)
    df, _ = current_rows(run_dir, load_results(run_dir))  # the newest spec's units (ip2p report says how many not)
    if df.empty:
        raise SpecError(f"{run_dir}: no result rows yet; run `ip2p sweep <spec> --out {run_dir}` first")
    state = run_state(run_dir, df)
    bad = bad_stored_images(run_dir, df)
    agg = aggregate(df) if agg is None else agg
    manifest = read_json_or(run_dir / "manifest.json", {})
    try:
        spec_yaml = (run_dir / "spec.yaml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        spec_yaml = ""
    parts = _head(run_dir, manifest, df, state, bad)
    parts += _figure(run_dir, agg, state, figure_png)
    from bench.sweep_ends import curve_sweep_ends

    table = _sweep_ends(curve_sweep_ends(df, agg, run_dir) if ends is None else ends)
    if table:
        parts.append("<h2>Ends of each sweep, paired</h2>" + table)
    parts += _results(agg, metric_columns(df))
    parts.append("<h2>Edits</h2><p>Seed "
                 f"{int(df['seed'].min())}; columns are the settings in spec order.</p>")
    parts.append(_grid(run_dir, df, n_items, max_side, dict(zip(bad["file"], bad["problem"]))))
    parts += _provenance(manifest, df, spec_yaml)
    parts.append("</body></html>")
    out = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out


def _head(run_dir: Path, manifest: dict, df: pd.DataFrame, state, bad: pd.DataFrame) -> list[str]:
    """The page's head, title, description, and how far the run is (partial results, bad images)."""
    from bench.store import describe_bad_images

    name = manifest.get("name") or run_dir.name
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(name)} - ip2p-bench report</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{_e(name)}</h1>"]
    desc = (manifest.get("spec") or {}).get("description")
    if desc:
        parts.append(f"<p>{_e(desc)}</p>")
    progress = state.line() if state.total is not None else f"state {state.state}"
    parts.append(f"<p id='summary'>{len(df)} result rows, {df['item_id'].nunique()} items, "
                 f"{df[['method', 'knobs']].drop_duplicates().shape[0]} settings; newest invocation: "
                 f"<span id='state'>{_e(progress)}</span>. Intervals: bootstrap 95% over items.</p>")
    if state.partial:
        parts.append(f"<p id='partial' class='warn'><b>Partial results:</b> {state.done} of {state.total} units "
                     f"done ({_e(state.state)}); every number below is over the units stored so far.</p>")
    if not bad.empty:
        parts.append(f"<p id='bad-images' class='warn'><b>Stored images:</b> {_e(describe_bad_images(run_dir, bad, limit=20))}</p>")
    return parts


def _figure(run_dir: Path, agg: pd.DataFrame, state, figure_png) -> list[str]:
    """The trade-off figure: ``figure_png`` when given, else drawn now when the CLIP metrics exist."""
    parts = ["<h2>Image consistency vs. edit direction</h2>"]
    if figure_png is not None and Path(figure_png).is_file():
        parts.append(f"<img class='fig' id='figure' alt='tradeoff figure' src='{_data_uri(Path(figure_png).read_bytes())}'>")
    elif "clip_sim_direction_mean" in agg.columns:
        import tempfile

        from bench.plot import method_names_of, plot_tradeoff

        with tempfile.TemporaryDirectory() as tmp:
            paths = plot_tradeoff(agg, Path(tmp) / "fig", method_names=method_names_of(run_dir),
                                  note=f"partial: {state.line()}" if state.partial else None)
            parts.append(f"<img class='fig' id='figure' alt='tradeoff figure' src='{_data_uri(paths['png'].read_bytes())}'>")
    return parts


def _results(agg: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The aggregate tables: all items, then each category."""
    parts = ["<h2>Results per setting</h2>", _table(agg, ALL, metrics, "aggregate-all")]
    cats = [c for c in agg["category"].unique() if c != ALL]
    if cats:
        parts.append("<h2>Results per category</h2>")
        for c in cats:
            parts.append(f"<h3>{_e(c)}</h3>")
            parts.append(_table(agg, c, metrics, f"aggregate-{c}"))
    return parts


def _provenance(manifest: dict, df: pd.DataFrame, spec_yaml: str) -> list[str]:
    """Where the results were made (from the manifest), the metric spec and the experiment spec."""
    prov_rows = []
    git = manifest.get("git", {})
    prov_rows.append(("git commit", f"{git.get('commit')}{' (local changes)' if git.get('dirty') else ''}"))
    prov_rows.append(("spec fingerprint", manifest.get("spec_fingerprint")))
    hw = manifest.get("hardware", {})
    prov_rows.append(("hardware", f"{hw.get('platform')}; {hw.get('cpu_count')} CPUs; GPUs: {hw.get('gpus') or 'none'}"))
    for pkg, v in (manifest.get("packages") or {}).items():
        prov_rows.append((pkg, v))
    for m, ident in (manifest.get("models") or {}).items():
        prov_rows.append((f"model of {m}", json.dumps(ident, sort_keys=True)))
    for inv in manifest.get("invocations", []):
        prov_rows.append(("invocation", f"{inv.get('started')} -> {inv.get('finished')}; world size "
                          f"{inv.get('world_size')}; device {inv.get('device')}; {inv.get('seconds')} s"))
    return ["<h2>Provenance</h2>",
            "<table id='provenance'>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in prov_rows)
            + "</table>",
            "<h3>Metric spec</h3><pre>" + _e(json.dumps(json.loads(df["metric_spec"].iloc[0]), indent=2)) + "</pre>",
            "<h3>Experiment spec</h3><pre id='spec'>" + _e(spec_yaml) + "</pre>",
            "<details><summary>Full manifest</summary><pre>" + _e(json.dumps(manifest, indent=2)) + "</pre></details>"]
