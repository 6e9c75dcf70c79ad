"""``ip2p ablate <spec.yaml>``: the paper's data ablations, end to end and resumable.

A spec names a pool of generated pairs (``ip2p data pairs``), the CLIP filter (``ip2p data
filter``), the dataset variants (size; filter on or off; generated pairs or the small world's exact
pairs), a training recipe (``ip2p train`` options) and a harness spec (``ip2p sweep``) whose first
method is the template every variant's checkpoint is swept with. It writes, under ``--out``::

    pool/                 the generated pairs (official layout), their similarities, filter_table.md,
                          seeds_filtered.json (the kept pairs; seeds.json lists every pair)
    data/<variant>/       seeds.json of the variant's pairs (+ links to the pool's prompt folders)
    models/<variant>/     one InstructPix2Pix checkpoint per variant (a diffusers folder)
    sweep/                one sweep over every variant (one method label per variant)
    ablation.png / .pdf   the paper-style figure: one curve per variant, x = CLIP directional
                          similarity, y = CLIP image similarity (bench.plot)
    ablation_table.md / .csv   per model: its data and the mean similarities over its curve
    ablation_paired.md    the paper's questions as paired differences (filter off - on at each size;
                          each size - the next smaller one) with bootstrap intervals over test items
    timings.json, spec.yaml, sweep_spec.yaml

What is already built, trained or evaluated is not redone: the pool and the sweep resume by
themselves; a variant's data and checkpoint carry a marker with the hash of what made them, and a
killed training resumes from its newest checkpoint. A marker whose hash differs from the spec's is
an error (rename the variant or delete its folder), never a silent mix.

Spec (YAML)::

    name: world-ablation
    base: world:ip2p                 # what each variant fine-tunes (ip2p train --base)
    pairs: {model: world:sd, prompts: world:triplets, limit: 400, n_per_prompt: 8, steps: 10,
            seed: 0, batch_size: 32}
    filter: {clip: {model: world:clip, pretrained: null},
             thresholds: {min_image: 0.75, min_direction: 0.2, min_sim_0: 0.2, min_sim_1: 0.2, max_per_prompt: 4}}
    variants:                        # or grid: {source: [generated], size: [...], filter: [true, false]}
      - {name: gen-100-filtered, source: generated, size: 100, filter: true}
      - {name: world-100, source: world, size: 100}
    train: {steps: 200, batch_size: 16, resolution: 64, flip: false}   # TrainConfig fields
    sweep: ablation_sweep.yaml       # harness spec (relative to this file); methods[0] is the template
    include_base: true               # also sweep the base model, as a reference curve
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ip2p.errors import SpecError
from ip2p.util.paths import safe_output_path

MARKER = "ablation_variant.json"
FILTERED_SEEDS = "seeds_filtered.json"  # the filter's kept pairs (the pool's seeds.json lists every pair)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairsSpec(_Strict):
    model: str = "world:sd"
    prompts: str = "world:triplets"
    limit: int | None = Field(default=None, gt=0)
    n_per_prompt: int = Field(default=8, gt=0)
    steps: int = Field(default=20, gt=0)
    seed: int = 0
    batch_size: int = Field(default=16, gt=0)
    p2p_range: tuple[float, float] = (0.1, 0.9)
    cfg_range: tuple[float, float] = (7.5, 15.0)
    dtype: str = "float32"


class ClipModelSpec(_Strict):
    model: str = "world:clip"
    pretrained: str | None = None


class FilterSpec(_Strict):
    clip: ClipModelSpec = Field(default_factory=ClipModelSpec)
    thresholds: dict[str, float | int | None] = Field(default_factory=dict)  # ClipFilter fields


class VariantSpec(_Strict):
    name: str
    source: Literal["generated", "world"] = "generated"
    size: int = Field(gt=0)
    filter: bool = True  # generated pairs only

    def data_identity(self) -> dict:
        return {"source": self.source, "size": self.size, "filter": self.filter if self.source == "generated" else None}


class GridSpec(_Strict):
    source: list[Literal["generated", "world"]] = Field(default_factory=lambda: ["generated"])
    size: list[int]
    filter: list[bool] = Field(default_factory=lambda: [True, False])


class AblationSpec(_Strict):
    name: str
    description: str = ""
    base: str = "world:ip2p"
    pairs: PairsSpec = Field(default_factory=PairsSpec)
    filter: FilterSpec = Field(default_factory=FilterSpec)
    variants: list[VariantSpec] = Field(default_factory=list)
    grid: GridSpec | None = None
    subset_seed: int = 0
    train: dict[str, Any] = Field(default_factory=dict)
    sweep: str
    include_base: bool = True
    device: str | None = None

    def all_variants(self) -> list[VariantSpec]:
        out = list(self.variants)
        if self.grid is not None:
            for src in self.grid.source:
                for size in self.grid.size:
                    for flt in (self.grid.filter if src == "generated" else [None]):
                        name = f"{'gen' if src == 'generated' else 'world'}-{size}"
                        if flt is not None:
                            name += "-filtered" if flt else "-unfiltered"
                        out.append(VariantSpec(name=name, source=src, size=size, filter=bool(flt)))
        return out


def load_ablation_spec(path: str | Path) -> tuple[AblationSpec, Path]:
    """The spec and the folder relative paths are read from; SpecError naming the field otherwise."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"ablation spec not found: {p}")
    from ip2p.util.textfiles import load_yaml

    data = load_yaml(p, SpecError, what="ablation spec")
    try:
        spec = AblationSpec.model_validate(data)
    except ValidationError as e:
        from bench.spec import _format_validation_error

        raise SpecError(f"{p}: {_format_validation_error(e)}") from None
    variants = spec.all_variants()
    if not variants:
        raise SpecError(f"{p}: variants: none given (list variants or a grid)")
    seen = set()
    for i, v in enumerate(variants):
        if v.name in seen or v.name == "base":
            raise SpecError(f"{p}: variants[{i}].name: {v.name!r} is used twice (or is the reserved name 'base')")
        from ip2p.util.paths import UnsafePathError, check_relative_name

        try:  # it names the variant's data and model folders
            if len(check_relative_name(v.name, what=f"variants[{i}].name")) != 1:
                raise UnsafePathError(f"variants[{i}].name {v.name!r}: holds a '/'; it names one folder")
        except UnsafePathError as e:
            raise SpecError(f"{p}: {e}") from None
        seen.add(v.name)
    from ip2p.data.filtering import ClipFilter
    from ip2p.train.config import TrainConfig

    try:
        ClipFilter(**spec.filter.thresholds)
    except TypeError as e:
        raise SpecError(f"{p}: filter.thresholds: {e}; fields: min_image, min_direction, min_sim_0, min_sim_1, "
                        f"max_per_prompt") from None
    fields = set(TrainConfig.__dataclass_fields__) - {"base", "data", "out", "split", "data_options", "subset",
                                                      "clip_filter", "resume"}
    bad = sorted(set(spec.train) - fields)
    if bad:
        raise SpecError(f"{p}: train.{bad[0]}: not a training option here; options: {', '.join(sorted(fields))}")
    return spec, p.parent


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
    from bench.sweep import pick_device
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
    for name, model_dir in models.items():
        methods.append({**template, "label": name, "model": str(model_dir)})
    harness["methods"] = methods
    harness["name"] = f"{spec.name}-sweep"
    return harness


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
    rows = ablation_table(agg, variants, data, pool_report, timings.data)
    _write_table(rows, out)
    paired = paired_differences(df, comparisons(variants))
    _write_paired(paired, out, df["item_id"].nunique())
    harness_path = Path(spec.sweep) if Path(spec.sweep).is_absolute() or Path(spec.sweep).exists() else base_dir / spec.sweep
    shutil.copyfile(harness_path, out / "sweep_spec.yaml")
    if report is not None:
        rep = Path(report)
        rep.mkdir(parents=True, exist_ok=True)
        for name in ("ablation.png", "ablation.pdf", "ablation_table.md", "ablation_table.csv", "ablation_paired.md",
                     "timings.json", "spec.yaml", "sweep_spec.yaml"):
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


def ablation_table(agg, variants, data, pool_report, timings) -> list[dict]:
    """One row per model: its data, and the mean CLIP directional / image similarity over its curve."""
    from bench.aggregate import ALL

    sub = agg[agg["category"] == ALL]
    out = []
    info = {v.name: v for v in variants}
    for label, g in sub.groupby("method", sort=False):
        v = info.get(label)
        out.append({
            "model": label,
            "source": v.source if v else "(base model)",
            "pairs": data[label][2] if v else None,
            "filter": (v.filter if v.source == "generated" else None) if v else None,
            "train_s": timings.get(f"train:{label}"),
            "clip_sim_direction": round(float(g["clip_sim_direction_mean"].mean()), 4),
            "clip_sim_image": round(float(g["clip_sim_image_mean"].mean()), 4),
            "points": len(g),
            **({"target_l1": round(float(g["target_l1_mean"].mean()), 4)} if "target_l1_mean" in g else {}),
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


def paired_differences(df, pairs: list[tuple[str, str, str]], metrics=("clip_sim_direction", "clip_sim_image")) -> list[dict]:
    """Mean of ``a - b`` per metric with a bootstrap 95% interval over test items: both models see the
    same items, seeds and settings, so each item's difference (averaged over the settings) is paired."""
    from bench.aggregate import _rng_for, bootstrap_ci

    rows = []
    for question, a, b in pairs:
        row = {"question": question, "a": a, "b": b}
        for m in metrics:
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

    lines = ["| question | a | b | clip_sim_direction a - b | clip_sim_image a - b |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['question']} | {r['a']} | {r['b']} | {r.get('clip_sim_direction', '')} | "
                     f"{r.get('clip_sim_image', '')} |")
    atomic_write_text(out / "ablation_paired.md", "\n".join(lines) + f"\n\nMean paired difference over {n_items} test "
                      "items (each item averaged over the sweep's settings), bootstrap 95% interval over items.\n")


def register(app) -> None:
    import typer

    @app.command("ablate")
    def ablate_command(
        spec: Path = typer.Argument(..., help="Ablation spec (YAML); see bench/ablate.py and bench/ablations/world.yaml."),
        out: Path = typer.Option(None, "--out", help="Run folder (default results/runs/<spec name>); rerun to resume."),
        report: Path = typer.Option(None, "--report", help="Also copy the figure, tables and timings here (e.g. reports/ablation)."),
    ) -> None:
        """Data ablations: build dataset variants, train one checkpoint each, sweep them, plot one curve per variant."""
        s, _ = load_ablation_spec(spec)
        from bench.cli import default_run_folder

        res = run_ablation(spec, out or default_run_folder(s.name), report=report)
        for r in res["rows"]:
            typer.echo(json.dumps(r))
        typer.echo(f"figure: {res['figures']['png']}")
