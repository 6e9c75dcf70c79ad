"""Experiment specs: YAML files describing one sweep, validated into typed objects.

A spec names a dataset or test set, the methods with their knob grids, the metrics and the
seeds. Every problem is a ``SpecError`` that names the field path, e.g.
``methods[0].knobs.image_guidance_scale: must be a number, got 'high'``.

    name: paper_fig
    dataset: {kind: official, path: data/clip-filtered-dataset, split: test, limit: 5000}
    methods:
      - name: instructpix2pix
        model: timbrooks/instructpix2pix
        knobs: {num_inference_steps: 100, resize: 512}
        grid:
          guidance_scale: [7.5]
          image_guidance_scale: {start: 1.0, stop: 2.2, step: 0.2}
    metrics: {clip: {model: ViT-L-14, pretrained: openai, preprocess: paper}}
    seeds: [0]
    batch_size: 8
    gate: {tolerance: {clip_sim_direction: 0.02}}     # only for `ip2p regress`
    max_units: 1000000     # refuse a sweep expanding to more work units (default; --max-units)
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ip2p.errors import SpecError

SEED_MAX = 2**63 - 1  # seeds are 0..2**63-1 (what torch.Generator().manual_seed takes as a non-negative int64)
DEFAULT_MAX_UNITS = 1_000_000  # a sweep expanding to more work units is refused (spec field max_units)
JUDGE_RUBRICS = ("viescore", "gedit", "imgedit")


def _not_bool(v: Any) -> Any:
    if isinstance(v, bool):  # YAML's true/false: pydantic would take them as 1/0
        raise ValueError(f"{str(v).lower()} is a boolean, not an integer")
    return v


Int = Annotated[int, BeforeValidator(_not_bool)]  # an integer field: true/false refused, never read as 1/0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GridRange(_Strict):
    """An inclusive arithmetic range: ``{start: 1.0, stop: 2.2, step: 0.2}``."""

    start: float
    stop: float
    step: float

    def count(self) -> int:
        """How many values the range holds, computed without listing them (0 for an empty or
        non-finite range)."""
        if not all(map(math.isfinite, (self.start, self.stop, self.step))) or self.step <= 0:
            return 0
        q = (self.stop - self.start) / self.step  # the tolerance absorbs float error, also for huge q
        return max(math.floor(q + max(1e-9, abs(q) * 1e-12)) + 1, 0)

    def values(self) -> list[float]:
        return [round(self.start + i * self.step, 10) for i in range(self.count())]


class DatasetSpec(_Strict):
    """Where the items come from. ``kind: world`` uses the small world's split (no path)."""

    kind: str  # a registered dataset kind (ip2p.data.registry), checked after the spec's plugins load
    path: str | None = None
    split: str = "test"
    limit: Int | None = Field(default=None, gt=0)
    categories: list[str] | None = None
    seed: Int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class MethodSpec(_Strict):
    """One method: registry ``name``, optional ``label`` (unique per spec), model source,
    fixed ``knobs`` and a ``grid`` of swept knobs (cartesian product); ``limit``: run this method on
    the dataset's first N items only (an expensive baseline beside a larger sweep)."""

    name: str
    label: str | None = None
    model: str | None = None
    knobs: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, Union[list[Any], GridRange]] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    limit: Int | None = Field(default=None, gt=0)  # this method on the dataset's first N items only

    @property
    def key(self) -> str:
        return self.label or self.name

    def grid_sizes(self) -> dict[str, int]:
        """knob -> number of grid values, counted without expanding ranges."""
        return {k: (v.count() if isinstance(v, GridRange) else len(v)) for k, v in self.grid.items()}

    def n_settings(self) -> int:
        return math.prod(self.grid_sizes().values())

    def grid_values(self) -> dict[str, list[Any]]:
        return {k: (v.values() if isinstance(v, GridRange) else list(v)) for k, v in self.grid.items()}

    def settings(self) -> list[dict[str, Any]]:
        """Every knob setting of this method: fixed knobs plus one point of the grid, in grid order."""
        grid = self.grid_values()
        names = list(grid)
        out = []
        for combo in itertools.product(*(grid[n] for n in names)):
            s = dict(self.knobs)
            s.update(zip(names, combo))
            out.append(s)
        return out


class ClipMetricSpec(_Strict):
    """CLIP backbone for the similarities: open_clip name (or a folder / ``world:clip``)."""

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    preprocess: Literal["paper", "open_clip"] = "paper"


class LpipsMetricSpec(_Strict):
    net: Literal["alex", "vgg", "squeeze"] = "alex"


class DinoMetricSpec(_Strict):
    """DINO similarity (MagicBrush / Emu Edit): backbone and the scorer's resize / centre crop."""

    model: str = "facebook/dino-vits16"
    resize: Int = Field(default=256, gt=0)
    crop: Int = Field(default=224, gt=0)


class StructureMetricSpec(_Strict):
    """PIE-Bench's structure distance: backbone, key layer, resize and the pixel scale it feeds."""

    model: str = "facebook/dino-vitb8"
    layer: Int = -1
    size: Int = Field(default=224, gt=0)
    max_size: Int = Field(default=480, gt=0)
    pixel_scale: float = 255.0
    antialias: bool = True


class JudgeMetricSpec(_Strict):
    """A vision-language judge (``ip2p.metrics.judge``): its rubrics and where it answers from.

    ``backend: endpoint``: an OpenAI-compatible chat API at ``base_url`` (its key, if any, from the
    environment variable ``api_key_env``), ``model`` as the API names it; ``backend: local``: a
    transformers image-text-to-text model (hub id or folder, optional ``revision``). ``sampling``
    overrides the rubric's published settings. Requests: ``timeout_s`` each, ``max_retries`` on
    timeouts / 429 / 5xx with backoff from ``backoff_s`` (at most ``max_backoff_s``), at most
    ``max_concurrency`` at once. Answers are cached in the run folder; ``retry_failed`` asks again
    the queries whose stored outcome is a failure."""

    rubrics: list[Literal[JUDGE_RUBRICS]] = Field(default_factory=lambda: ["viescore"], min_length=1)  # type: ignore[valid-type]
    backend: Literal["endpoint", "local"] = "endpoint"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    revision: str | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_s: float = Field(default=2.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)
    max_concurrency: int = Field(default=4, ge=1, le=256)
    retry_failed: bool = False

    def measured(self) -> dict[str, Any]:
        """The settings a judge's answers depend on (what the spec fingerprint keeps)."""
        return {k: getattr(self, k) for k in ("rubrics", "backend", "model", "base_url", "revision", "sampling")}


class MetricsSpec(_Strict):
    """Which metric groups to compute: clip (sim_0/1/direction/image), pixel (l1, psnr, ssim vs the
    input), lpips (vs the input), target (vs the target image, when the data has one), masked
    (pixel and lpips outside the edit mask, when the data has one), dino (DINO similarity to the
    input and to the target), structure (PIE-Bench structure distance), judge (a vision-language judge,
    ``metrics.judge``), pie (PIE-Bench background
    metrics and CLIP scores; uses the clip and lpips settings), success (the world's exact edit success,
    ``ip2p.metrics.success``: needs items with an exact target and edit mask). See
    ``ip2p.metrics.benchmark_metrics``. A plugin may register more groups (``ip2p.metrics.groups``)."""

    # registered metric groups (ip2p.metrics.groups), checked after the spec's plugins load
    compute: list[str] = Field(default_factory=lambda: ["clip", "pixel"])
    clip: ClipMetricSpec = Field(default_factory=ClipMetricSpec)
    lpips: LpipsMetricSpec = Field(default_factory=LpipsMetricSpec)
    dino: DinoMetricSpec = Field(default_factory=DinoMetricSpec)
    structure: StructureMetricSpec = Field(default_factory=StructureMetricSpec)
    judge: JudgeMetricSpec = Field(default_factory=JudgeMetricSpec)


class BenchmarkSpec(_Strict):
    """How a published benchmark's run is reported (``bench.benchmarks``): ``single_turn`` says which
    MagicBrush turns the single-turn table counts (``all``: every turn from its ground-truth input, as
    the official scorer's "all turn"; ``first``: turn 1 only); ``official_names`` writes the outputs
    again under the benchmark's own file names."""

    single_turn: Literal["all", "first"] = "all"
    official_names: bool = True


class GateSpec(_Strict):
    """How ``ip2p regress`` judges this suite against a golden file (a policy, not part of the
    measurement: changing it never invalidates a golden file).

    ``metrics``: the columns gated (default: every column that declares a better direction in
    ``ip2p.metrics.groups.COLUMNS``); ``tolerance``: per-column overrides of the tolerance declared
    there; ``level``: of the bootstrap interval; ``n_boot``: bootstrap resamples."""

    metrics: list[str] | None = None
    tolerance: dict[str, float] = Field(default_factory=dict)
    level: float = Field(default=0.95, gt=0.5, lt=1.0)
    n_boot: Int = Field(default=2000, ge=100)


class ExperimentSpec(_Strict):
    name: str
    description: str = ""
    dataset: DatasetSpec
    methods: list[MethodSpec] = Field(min_length=1)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    seeds: list[Int] = Field(default_factory=lambda: [0], min_length=1)
    batch_size: Int = Field(default=8, gt=0)
    device: str = "auto"
    save_images: bool = True
    plugins: list[str] = Field(default_factory=list)  # modules to import first: they register methods
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    max_units: Int = Field(default=DEFAULT_MAX_UNITS, gt=0)  # refuse sweeps expanding to more work units

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def item_limits(self) -> dict[str, int]:
        """Method label -> its item limit, for the methods that have one."""
        return {m.key: m.limit for m in self.methods if m.limit}

    def fingerprint(self) -> str:
        """Hash of what a result row's content depends on (dataset source, methods' models,
        options and fixed knobs, metrics). Grids, limits and seeds may grow between runs of
        one folder (they add work units); these may not."""
        d = self.to_dict()
        core = {
            "dataset": {k: d["dataset"][k] for k in ("kind", "path", "split", "categories", "seed", "options")},
            "methods": [
                {k: m[k] for k in ("name", "label", "model", "options")} for m in d["methods"]
            ],
            # a group's settings count only when the group is computed (so adding a group's
            # settings to the spec schema leaves the fingerprints of older runs unchanged)
            "metrics": {k: v for k, v in d["metrics"].items()
                        if k not in ("dino", "structure", "judge") or k in d["metrics"]["compute"]},
        }
        if "judge" in core["metrics"]:
            core["metrics"]["judge"] = self.metrics.judge.measured()
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("list[any]", "GridRange", "list", "literal"):  # union branch names from pydantic
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format_validation_error(e: ValidationError) -> str:
    seen, lines = set(), []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("list[", "function-"))))
        path = _loc_to_path(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        if err["type"] == "missing":
            msg = "required field is missing"
        line = f"{path}: {msg}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return "; ".join(lines)


def _check_grid_sizes(m, sizes: dict[str, int], where: str, max_units: int) -> None:
    """Each swept knob of method ``m``: not also fixed, a finite non-empty range, at most ``max_units`` values."""
    for knob, n in sizes.items():
        path = f"{where}.grid.{knob}"
        if knob in m.knobs:
            raise SpecError(f"{path}: knob {knob!r} is both fixed (knobs) and swept (grid); keep one")
        rng = m.grid[knob]
        if isinstance(rng, GridRange) and not all(map(math.isfinite, (rng.start, rng.stop, rng.step))):
            raise SpecError(f"{path}: start, stop and step must be finite numbers, got {rng.start}, {rng.stop}, {rng.step}")
        if n == 0:
            raise SpecError(f"{path}: empty grid (give at least one value; a range needs step > 0 and stop >= start)")
        if n > max_units:
            raise SpecError(f"{path}: the grid has {n:,} values, more than max_units={max_units:,}; "
                            "use a larger step or fewer values (or raise max_units in the spec / --max-units)")


def _check_semantics(spec: ExperimentSpec, base_dir: Path | None, check_paths: bool = True) -> None:
    """Checks pydantic cannot express: registry names, knob names and values, grids, seeds, size, paths."""
    from bench.benchmarks import get_benchmark
    from ip2p.registry import get_method, load_plugins

    load_plugins(spec.plugins)
    _check_registered(spec)
    ds = spec.dataset
    if get_benchmark(ds.kind).needs_path:
        if not ds.path:
            raise SpecError(f"dataset.path: required for dataset kind {ds.kind!r}")
        if check_paths and not resolve_data_path(ds.path, base_dir).exists():
            raise SpecError(f"dataset.path: not found: {ds.path} (relative paths are read from the current folder)")
    _check_seeds(spec.seeds)
    labels: dict[str, int] = {}
    total_settings = 0
    for i, m in enumerate(spec.methods):
        where = f"methods[{i}]"
        try:
            info = get_method(m.name)
        except SpecError as e:
            raise SpecError(f"{where}.name: {e}") from None
        if m.key in labels:
            raise SpecError(
                f"{where}.label: {m.key!r} is already used by methods[{labels[m.key]}]; give each method a unique label"
            )
        labels[m.key] = i
        for knob, value in m.knobs.items():
            _check_knob(info, knob, value, f"{where}.knobs.{knob}")
        sizes = m.grid_sizes()  # counted first: a range of a billion values is never listed
        _check_grid_sizes(m, sizes, where, spec.max_units)
        n_settings = math.prod(sizes.values())
        if n_settings > spec.max_units:
            detail = " x ".join(f"{k} {n:,}" for k, n in sizes.items())
            raise SpecError(f"{where}.grid: {detail} = {n_settings:,} settings, more than max_units={spec.max_units:,}; "
                            "sweep fewer values (or raise max_units in the spec / --max-units)")
        total_settings += n_settings
        for knob, values in m.grid.items():
            path = f"{where}.grid.{knob}"
            vals = values.values() if isinstance(values, GridRange) else values
            for j, v in enumerate(vals):
                _check_knob(info, knob, v, f"{path}[{j}]")
            _check_distinct(vals, path)
    if total_settings * len(spec.seeds) > spec.max_units:
        raise SpecError(f"seeds: {total_settings:,} settings x {len(spec.seeds)} seeds = "
                        f"{total_settings * len(spec.seeds):,} work units before any item, more than "
                        f"max_units={spec.max_units:,}; use fewer seeds or settings (or raise max_units / --max-units)")

    _check_gate(spec.gate)
    _check_judge(spec.metrics)


def _check_judge(metrics: MetricsSpec) -> None:
    if "judge" not in metrics.compute:
        return
    j = metrics.judge
    if not j.model:
        raise SpecError("metrics.judge.model: required when metrics.compute has 'judge' (the endpoint's model name, "
                        "or a hub id / folder of a local image-text-to-text model)")
    if j.backend == "endpoint" and not j.base_url:
        raise SpecError("metrics.judge.base_url: required for backend 'endpoint' (e.g. http://127.0.0.1:8000/v1)")


def _check_registered(spec: ExperimentSpec) -> None:
    """The dataset kind and the metric groups must be registered (built in, or by a plugin)."""
    from ip2p.data.registry import dataset_kinds
    from ip2p.metrics.groups import metric_groups

    kinds = dataset_kinds()
    if spec.dataset.kind not in kinds:
        raise SpecError(f"dataset.kind: unknown kind {spec.dataset.kind!r}; known: {', '.join(sorted(kinds))}")
    groups = metric_groups()
    for j, g in enumerate(spec.metrics.compute):
        if g not in groups:
            raise SpecError(f"metrics.compute[{j}]: unknown metric group {g!r}; known: {', '.join(sorted(groups))}")


def _check_gate(gate: GateSpec) -> None:
    """Gated and tolerated columns must be metric columns with a declared better direction."""
    from ip2p.metrics.suite import COLUMNS

    directed = sorted(c for c, info in COLUMNS.items() if info.better)
    for where, names in (("gate.metrics", gate.metrics or []), ("gate.tolerance", list(gate.tolerance))):
        for name in names:
            if name not in COLUMNS:
                raise SpecError(f"{where}.{name}: unknown metric column; columns with a direction are {directed}")
            if COLUMNS[name].better is None:
                raise SpecError(f"{where}.{name}: this column does not depend on the edit (no better direction), "
                                "so it cannot be gated; remove it")
    for name, tol in gate.tolerance.items():
        if not (tol >= 0):
            raise SpecError(f"gate.tolerance.{name}: must be a number >= 0, got {tol!r}")


def _check_seeds(seeds: list[int]) -> None:
    for j, seed in enumerate(seeds):
        if not 0 <= seed <= SEED_MAX:
            raise SpecError(f"seeds[{j}]: {seed} is outside 0..{SEED_MAX} (2**63-1, the seeds torch.Generator "
                            "takes); use a seed in that range")
    _check_distinct(seeds, "seeds")


def _same_value_key(v: Any) -> Any:
    """Values a unit would be keyed by differently but that mean the same: 1 and 1.0."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return ("number", float(v))
    return ("other", json.dumps(v, sort_keys=True, default=str))


def _check_distinct(values: list[Any], path: str) -> None:
    seen: dict[Any, int] = {}
    for j, v in enumerate(values):
        k = _same_value_key(v)
        if k in seen:
            first = values[seen[k]]
            same = "the same value" if repr(first) == repr(v) else "equal as numbers"
            raise SpecError(f"{path}: values [{seen[k]}] {first!r} and [{j}] {v!r} are {same}; "
                            "list each value once (each would be run and reported as its own setting)")
        seen[k] = j


def _check_knob(info, knob: str, value: Any, path: str) -> None:
    if knob not in info.knobs:
        raise SpecError(f"{path}: method {info.name!r} has no knob {knob!r}; its knobs are {sorted(info.knobs)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{path}: must be a finite number, got {value!r}; give a real value")
    why = info.knobs[knob].check(value)
    if why:
        raise SpecError(f"{path}: {why}")


def resolve_data_path(path: str, base_dir: Path | None = None) -> Path:
    """A dataset path as given, or relative to the spec's folder when that is where it exists."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or base_dir is None:
        return p
    alt = base_dir / p
    return alt if alt.exists() else p


def parse_spec(data: Any, *, source: str = "<spec>", base_dir: Path | None = None, check_paths: bool = True,
               max_units: int | None = None) -> ExperimentSpec:
    """Validate a spec given as a mapping; SpecError naming ``source`` and the field otherwise.
    ``max_units`` (e.g. from ``--max-units``) replaces the spec's own limit."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a mapping of fields, got {type(data).__name__}")
    if max_units is not None:
        data = {**data, "max_units": max_units}
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {_format_validation_error(e)}") from None
    try:
        _check_semantics(spec, base_dir, check_paths)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    return spec


def load_spec(path: str | Path, *, check_paths: bool = True, max_units: int | None = None) -> ExperimentSpec:
    """Read and validate a YAML spec file (a bare name is looked up in bench/suites/)."""
    p = Path(path)
    if not p.is_file():  # a bare name such as "baselines" may also be a folder of the current directory
        suite = Path(__file__).resolve().parent / "suites" / (p.name if p.suffix else p.name + ".yaml")
        if suite.is_file():
            p = suite
        else:
            raise SpecError(f"spec file not found: {path} (nor a suite of that name in bench/suites/)")
    from ip2p.util.textfiles import load_yaml

    data = load_yaml(p, SpecError, what="spec")
    return parse_spec(data, source=str(p), base_dir=p.parent, check_paths=check_paths, max_units=max_units)
