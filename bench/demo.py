"""``ip2p demo``: the small world end to end, on CPU in minutes.

Sweep ``bench/suites/world.yaml`` (InstructPix2Pix of the world over sI x sT, plus every baseline
registered in ``ip2p.registry`` with a demo grid), metrics with ``world:clip``, then aggregate,
figure and HTML report. The run folder (resumable) defaults to ``results/runs/demo-world``; what
is worth committing goes to ``--out`` (default ``reports/demo/``):

    report.html           self-contained report (tables, figure, image grids)
    tradeoff.pdf / .png   the paper's figure for the world
    edits.png             the first test item of each category: input, every setting's output, target
    aggregate.csv         means and bootstrap 95% intervals per setting and category
    results.parquet       every result row (one per work unit)
    manifest.json, spec.yaml   provenance of the run
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from ip2p.errors import ModelLoadError

SUITE = Path(__file__).resolve().parent / "suites" / "world.yaml"
_BUILD_HINT = {
    "ip2p": "train it with `ip2p world train-ip2p` (trains from world:sd, ships to "
            "ip2p/world/weights/ip2p)",
    "clip": "train it with `ip2p world train-clip --which metric`",
    "sd": "train it with `ip2p world train-vae` then `ip2p world train-sd`",
}


def _require_world_models(names) -> None:
    from ip2p.models import resolve_source

    missing = []
    for n in names:
        try:
            resolve_source(f"world:{n}")
        except ModelLoadError as e:
            missing.append(f"'world:{n}' is not built yet ({e}); {_BUILD_HINT.get(n, 'see ip2p/world/README.md')}")
    if missing:
        raise ModelLoadError("the demo needs the small world's shipped models: " + " | ".join(missing))


def demo_spec(items: int | None = None, steps: int | None = None, model: str | None = None,
              clip_model: str | None = None, baselines: bool = True) -> dict:
    """The world suite plus the registered baselines' demo grids, as a spec mapping.
    ``model`` / ``clip_model`` replace world:ip2p / world:clip (smoke tests with other models)."""
    from ip2p.registry import registered_methods

    data = yaml.safe_load(SUITE.read_text())
    if model is not None:
        data["methods"][0]["model"] = model
    if clip_model is not None:
        data["metrics"]["clip"]["model"] = clip_model
    if items is not None:
        data["dataset"]["limit"] = int(items)
    if steps is not None:
        data["methods"][0]["knobs"]["num_inference_steps"] = int(steps)
    for name, info in sorted(registered_methods().items() if baselines else []):
        if name == "instructpix2pix" or not info.demo_grid:
            continue
        entry = {"name": name, "model": info.demo_model, "knobs": dict(info.demo_knobs),
                 "grid": {k: list(v) for k, v in info.demo_grid.items()}}
        if info.demo_limit:
            entry["limit"] = min(info.demo_limit, int(items)) if items is not None else info.demo_limit
        data["methods"].append(entry)
    if not baselines:
        data["methods"] = [m for m in data["methods"] if m["name"] == "instructpix2pix"]
    from ip2p.metrics.lpips_metric import backbone_file

    if backbone_file(data["metrics"].get("lpips", {}).get("net", "alex")).exists():  # LPIPS where it can be computed
        data["metrics"]["compute"] = list(data["metrics"]["compute"]) + ["lpips"]
    return data


def run_demo(out: str | Path = "reports/demo", *, run_dir: str | Path = "results/runs/demo-world",
             fresh: bool = False, items: int | None = None, steps: int | None = None, progress: bool = True,
             model: str | None = None, clip_model: str | None = None, baselines: bool = True) -> dict:
    from bench.aggregate import aggregate, print_table, write_aggregate
    from bench.plot import method_names_of, plot_tradeoff
    from bench.report import build_report
    from bench.spec import parse_spec
    from bench.store import load_results
    from bench.sweep import run_sweep
    from ip2p.util.io import atomic_write_bytes

    t0 = time.time()
    out, run_dir = Path(out), Path(run_dir)
    data = demo_spec(items, steps, model, clip_model, baselines)
    spec = parse_spec(data, source=f"{SUITE} (+ registered baselines)")
    world_models = {m.model.split(":", 1)[1] for m in spec.methods if m.model and m.model.startswith("world:")}
    if "clip" in spec.metrics.compute and spec.metrics.clip.model.startswith("world:"):
        world_models.add(spec.metrics.clip.model.split(":", 1)[1])
    _require_world_models(sorted(world_models))
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_sweep(spec, run_dir, progress=progress)
    df = load_results(run_dir)
    agg = aggregate(df)
    out.mkdir(parents=True, exist_ok=True)
    write_aggregate(agg, run_dir)
    shutil.copyfile(run_dir / "aggregate.csv", out / "aggregate.csv")
    figs = plot_tradeoff(agg, out / "tradeoff", method_names=method_names_of(run_dir),
                         title=f"Small world: image consistency vs. edit direction ({df['item_id'].nunique()} test items)")
    from bench.sweep_ends import curve_sweep_ends, write_sweep_ends

    ends = curve_sweep_ends(df, agg, run_dir)
    report = build_report(run_dir, out / "report.html", agg=agg, figure_png=figs["png"], ends=ends)
    from bench.edit_grid import edit_grid

    edit_grid(run_dir, df, out / "edits.png")
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out / "results.parquet", buf.getvalue())
    for name in ("manifest.json", "spec.yaml"):
        shutil.copyfile(run_dir / name, out / name)
    for p in out.iterdir():  # atomic writes create private files; these are meant to be shared
        if p.is_file():
            p.chmod(0o644)
    print_table(agg, metrics=["clip_sim_direction", "clip_sim_image", "target_l1"])
    if write_sweep_ends(ends, out):
        for r in ends.itertuples():
            print(f"{r.method}: {r.knob} {r._3:g} -> {r.to:g}, {r.metric} {r.mean_difference:+.4f} "
                  f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] over {r.n_items} items (paired)")
    return {"seconds": time.time() - t0, "report": report, "figures": figs, "rows": len(df)}
