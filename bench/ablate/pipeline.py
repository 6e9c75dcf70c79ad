"""An ablation's stages, each resumable: the pool of pairs and its filter, each variant's data and
checkpoint (with a marker of the hash that made them), one sweep over every variant, then the figure
and tables (``bench.ablate`` describes the run folder)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ip2p.errors import SpecError
from ip2p.util.paths import safe_output_path

from bench.ablate.spec import FILTERED_SEEDS, MARKER, AblationSpec, VariantSpec, load_ablation_spec
from bench.ablate.tables import _write_paired, _write_table, ablation_table, comparisons, paired_differences


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Timings:
    """Wall seconds per stage, kept in ``timings.json`` (only stages that ran add time)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, stage: str, seconds: float) -> None:
        from ip2p.util.io import atomic_write_json

        self.data[stage] = round(self.data.get(stage, 0.0) + seconds, 1)
        atomic_write_json(self.path, self.data)


def _say(msg: str) -> None:
    print(f"[ablate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- stages

def build_pool(spec: AblationSpec, out: Path, timings: Timings) -> dict:
    """Generate (or complete) the pool, then compute its similarities and filter it."""
    from bench.distributed import pick_device
    from ip2p.data.cli import _dtype
    from ip2p.data.filtering import ClipFilter
    from ip2p.data.pair_filter import filter_pairs
    from ip2p.data.pairs import generate_pairs
    from ip2p.metrics import ClipSimilarity

    pool = out / "pool"
    ps = spec.pairs
    device = pick_device(spec.device or "auto", 0)
    t0 = time.time()
    summary = generate_pairs(ps.model, ps.prompts, pool, n_per_prompt=ps.n_per_prompt, steps=ps.steps, run_seed=ps.seed,
                             batch_size=ps.batch_size, p2p_range=tuple(ps.p2p_range), cfg_range=tuple(ps.cfg_range),
                             limit=ps.limit, device=device, dtype=_dtype(ps.dtype))
    if summary["generated_now"]:
        timings.add("pairs", time.time() - t0)
    _say(f"pool: {summary['pairs']} pairs of {summary['prompts']} prompts ({summary['generated_now']} generated now)")
    flt = ClipFilter(**spec.filter.thresholds)
    report_path = pool / "filter_report.json"
    expected = {"thresholds": flt.to_dict(), "pairs": summary["pairs"], "clip": spec.filter.clip.model_dump()}
    if report_path.is_file():
        old = json.loads(report_path.read_text())
        if old.get("ablation_key") == _hash(expected):
            _say(f"filter: already done ({old['kept']} of {old['pairs']} kept)")
            return old
    t0 = time.time()
    c = spec.filter.clip
    clip = ClipSimilarity(c.model, c.pretrained, device=device, cache=str(pool / "clip_embeddings.sqlite"))
    report = filter_pairs(pool, clip, flt, seeds_out=pool / FILTERED_SEEDS)
    timings.add("filter", time.time() - t0)
    report.pop("table", None)
    report["ablation_key"] = _hash(expected)
    from ip2p.util.io import atomic_write_json

    atomic_write_json(report_path, report)
    _say(f"filter: kept {report['kept']} of {report['pairs']} pairs")
    return report


def _pool_pairs(pool: Path, filtered: bool) -> list[tuple[str, int]]:
    """(prompt folder, seed) of the pool's pairs: the filter's kept ones, or every complete pair."""
    from ip2p.data.pair_filter import prompt_folders
    from ip2p.data.pairs import read_folder

    if filtered:
        data = json.loads((pool / FILTERED_SEEDS).read_text())
        return [(d, int(s)) for d, seeds in data for s in seeds]
    return [(f.name, s) for f in prompt_folders(pool) for s in read_folder(f).rows]


def build_variant_data(spec: AblationSpec, v: VariantSpec, out: Path) -> tuple[str, dict, int]:
    """(dataset spec, reader options, pairs) of a variant; generated variants get a folder
    ``data/<name>`` whose seeds.json lists ``size`` pairs chosen deterministically (nested: the
    pairs of a smaller size are among those of a larger one)."""
    if v.source == "world":
        return "world:train", {"n": v.size}, v.size
    from ip2p.data.pairs import write_seeds_json
    from ip2p.data.rows import stable_unit
    from ip2p.util.io import atomic_write_json

    pool = out / "pool"
    candidates = _pool_pairs(pool, v.filter)
    if len(candidates) < v.size:
        raise SpecError(f"variants {v.name!r}: size {v.size} but the pool has only {len(candidates)} "
                        f"{'filtered' if v.filter else 'generated'} pairs; raise pairs.limit or pairs.n_per_prompt, "
                        f"or lower the filter thresholds")
    order = sorted(candidates, key=lambda p: (stable_unit(spec.subset_seed, f"{p[0]}/{p[1]}"), p))
    chosen = order[: v.size]
    key = _hash({"variant": v.data_identity(), "pairs": sorted(chosen)})
    root = safe_output_path(out / "data", v.name, what="variant name")
    marker = root / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()).get("key") != key:
            raise SpecError(f"{root}: variant {v.name!r} was built from other pairs (spec or pool changed); delete "
                            f"that folder or give the variant another name")
        return f"official:{root}", {}, v.size
    root.mkdir(parents=True, exist_ok=True)
    by_folder: dict[str, list[int]] = {}
    for d, s in chosen:
        by_folder.setdefault(d, []).append(s)
    for d in by_folder:
        link = root / d
        if not link.exists():
            os.symlink(os.path.relpath(pool / d, root), link)
    write_seeds_json(root, by_folder)
    atomic_write_json(marker, {"key": key, "variant": v.model_dump(), "pairs": len(chosen), "prompts": len(by_folder)})
    return f"official:{root}", {}, v.size


def train_variant(spec: AblationSpec, v: VariantSpec, data: str, options: dict, out: Path, timings: Timings) -> Path:
    """One checkpoint per variant (``ip2p train``), skipped when its marker matches, resumed when killed."""
    from ip2p.train.config import TrainConfig
    from ip2p.train.trainer import train
    from ip2p.util.io import atomic_write_json

    model_dir = safe_output_path(out / "models", v.name, what="variant name")
    settings = {"base": spec.base, "data": data, "data_options": options, "train": spec.train,
                "data_key": json.loads((Path(data.split(':', 1)[1]) / MARKER).read_text())["key"]
                if data.startswith("official:") else v.data_identity()}
    key = _hash(settings)
    marker = model_dir / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()).get("key") != key:
            raise SpecError(f"{model_dir}: variant {v.name!r} was trained with other settings; delete that folder or "
                            f"give the variant another name")
        _say(f"train {v.name}: already trained")
        return model_dir
    train_opts = {"report_to": "none", "val_examples": 0, "checkpoint_every": 50, "checkpoints_keep": 1,
                  "cpu": (spec.device or "auto") == "cpu", **spec.train}
    cfg = TrainConfig(base=spec.base, data=data, out=str(model_dir), split="all" if data.startswith("official:") else "train",
                      data_options=options, resume="latest", **train_opts)
    _say(f"train {v.name}: {cfg.max_steps} steps on {data} {options or ''}")
    t0 = time.time()
    train(cfg)
    secs = time.time() - t0
    timings.add(f"train:{v.name}", secs)
    shutil.rmtree(model_dir / "checkpoints", ignore_errors=True)  # the exported pipeline is what is kept
    atomic_write_json(marker, {"key": key, "settings": settings, "variant": v.model_dump(), "train_seconds": round(secs, 1)})
    return model_dir


def sweep_spec(spec: AblationSpec, base_dir: Path, models: dict[str, Path]) -> dict:
    """The harness spec with its first method repeated once per variant (label = variant name)."""
    from bench.spec import load_spec

    path = Path(spec.sweep)
    path = path if path.is_absolute() or path.exists() else base_dir / path
    harness = load_spec(path).to_dict()
    template = harness["methods"][0]
    methods = []
    if spec.include_base:
        methods.append({**template, "label": "base", "model": spec.base})
    for label, model in spec.references.items():
        methods.append({**template, "label": label, "model": model})
    for name, model_dir in models.items():
        methods.append({**template, "label": name, "model": str(model_dir)})
    harness["methods"] = methods
    harness["name"] = f"{spec.name}-sweep"
    return harness


def _edits_png(df, out: Path) -> Path | None:
    """``edits.png``: every model's edit of the first test item of each category, at the middle setting of
    the sweep's grid (every model is swept on the same grid), beside the input and the target."""
    from bench.edit_grid import edit_grid

    settings = sorted(df["setting_index"].unique())
    return edit_grid(out / "sweep", df[df["setting_index"] == settings[len(settings) // 2]], out / "edits.png")


def run_ablation(spec_path: str | Path, out: str | Path, *, report: str | Path | None = None) -> dict:
    """Every stage of the module docstring; returns the table rows."""
    from bench.aggregate import aggregate, write_aggregate
    from bench.plot import plot_tradeoff
    from bench.spec import parse_spec
    from bench.store import load_results
    from bench.sweep import run_sweep

    spec, base_dir = load_ablation_spec(spec_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, out / "spec.yaml")
    timings = Timings(out / "timings.json")
    variants = spec.all_variants()
    pool_report = None
    if any(v.source == "generated" for v in variants):
        pool_report = build_pool(spec, out, timings)
    data = {v.name: build_variant_data(spec, v, out) for v in variants}
    models = {v.name: train_variant(spec, v, data[v.name][0], data[v.name][1], out, timings) for v in variants}
    harness = sweep_spec(spec, base_dir, models)
    t0 = time.time()
    _say(f"sweep: {len(harness['methods'])} models")
    res = run_sweep(parse_spec(harness, source=f"{spec_path} (sweep)", base_dir=base_dir), out / "sweep",
                    base_dir=base_dir, device=spec.device)
    if res.units_run:
        timings.add("sweep", time.time() - t0)
    df = load_results(out / "sweep")
    agg = aggregate(df)
    write_aggregate(agg, out / "sweep")
    figs = plot_tradeoff(agg, out / "ablation", title=f"{spec.name}: one curve per training-data variant "
                                                      f"({df['item_id'].nunique()} test items)")
    _edits_png(df, out)
    rows = ablation_table(agg, variants, data, pool_report, timings.data, spec.references)
    _write_table(rows, out)
    paired = paired_differences(df, comparisons(variants))
    _write_paired(paired, out, df["item_id"].nunique())
    harness_path = Path(spec.sweep) if Path(spec.sweep).is_absolute() or Path(spec.sweep).exists() else base_dir / spec.sweep
    shutil.copyfile(harness_path, out / "sweep_spec.yaml")
    if report is not None:
        rep = Path(report)
        rep.mkdir(parents=True, exist_ok=True)
        for name in ("ablation.png", "ablation.pdf", "ablation_table.md", "ablation_table.csv", "ablation_paired.md",
                     "timings.json", "spec.yaml", "sweep_spec.yaml") + (("edits.png",) if (out / "edits.png").is_file() else ()):
            shutil.copyfile(out / name, rep / name)
        shutil.copyfile(out / "sweep" / "aggregate.csv", rep / "aggregate.csv")
        shutil.copyfile(out / "sweep" / "manifest.json", rep / "sweep_manifest.json")  # versions, commit, hashes
        if (out / "pool" / "generation.json").is_file():
            shutil.copyfile(out / "pool" / "generation.json", rep / "pool_generation.json")
        if (out / "pool" / "filter_table.md").is_file():
            shutil.copyfile(out / "pool" / "filter_table.md", rep / "filter_table.md")
            shutil.copyfile(out / "pool" / "filter_report.json", rep / "filter_report.json")
        for p in rep.iterdir():
            if p.is_file():
                p.chmod(0o644)
    return {"rows": rows, "paired": paired, "figures": figs, "timings": timings.data}
