"""The sweep engine: spec -> work units -> batched edits -> metrics -> atomic result shards.

    units = every (method, knob setting, item, seed)     paired: same items and seeds per setting
    batches = consecutive runs of ``batch_size`` units (several items and settings per editor call),
              cut from the full list; batch i belongs to rank i % WORLD_SIZE
    mine  = the units of this rank's batches minus those already stored
    for each of my batches:
        editor.run(requests) -> images -> content-addressed PNGs -> metrics on the PNG pixels
        -> rows, flushed to a parquet shard (temporary name + rename) every ``shard_rows`` rows

A unit is done exactly when its row is in a shard, so killing the process anywhere (even with
SIGKILL) loses at most the rows not yet flushed; a rerun skips stored units and completes the run.
Under ``torchrun`` / ``accelerate launch`` each rank takes the units whose key hashes to it and
writes its own shards; the merged rows equal a single-process run (invariant 1 of DESIGN.md).

Test hook: ``IP2P_BENCH_KILL_AFTER=shard:K`` (or ``batch:K``) sends SIGKILL to this process right
after its K-th shard is written (or right after its K-th batch is edited and its images stored,
before its rows are flushed).
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ip2p.errors import NonFiniteOutputError, SpecError
from ip2p.protocol import EditRequest, check_identity
from ip2p.util.io import atomic_write_json, atomic_write_text, png_bytes

from bench.benchmarks import finish_run, turn_chain
from bench.data import load_items
from ip2p.registry import get_method
from bench.provenance import git_state, hardware, now_iso, package_versions
from bench.spec import ExperimentSpec
from bench.store import RunStore, load_results
from bench.units import expand_units, plan_batches

KILL_ENV = "IP2P_BENCH_KILL_AFTER"


@dataclass
class SweepResult:
    run_dir: Path
    rank: int
    world_size: int
    units_total: int  # units of the whole sweep (all ranks)
    units_mine: int  # units this rank owns
    units_skipped: int  # already stored when this invocation started
    units_run: int
    shards_written: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun / accelerate environment variables."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < world:
        raise SpecError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, local


def pick_device(requested: str, local_rank: int) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


class _Killer:
    """The test hook of the module docstring."""

    def __init__(self):
        spec = os.environ.get(KILL_ENV, "")
        self.stage, _, n = spec.partition(":")
        self.n = int(n) if n.strip().isdigit() else 0
        self.counts = {"shard": 0, "batch": 0}

    def tick(self, stage: str) -> None:
        self.counts[stage] += 1
        if self.n and stage == self.stage and self.counts[stage] >= self.n:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# ---- run folder bookkeeping ----------------------------------------------------------------

def prepare_run_folder(store: RunStore, spec: ExperimentSpec, rank: int) -> None:
    """Refuse a folder holding results of a different spec; record the spec (idempotent)."""
    fp_path = store.root / "spec.json"
    if fp_path.exists():
        old = json.loads(fp_path.read_text())
        if old.get("fingerprint") != spec.fingerprint():
            raise SpecError(
                f"{store.root} holds results of a different experiment (spec fingerprint "
                f"{old.get('fingerprint')} != {spec.fingerprint()}: dataset, models or metrics changed). "
                "Use another --out folder; grids, limits and seeds may grow within one folder."
            )
    if rank == 0:
        atomic_write_json(fp_path, {"fingerprint": spec.fingerprint(), "spec": spec.to_dict()})
        atomic_write_text(store.root / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))


def _read_manifest(store: RunStore) -> dict:
    if store.manifest_path.exists():
        try:
            return json.loads(store.manifest_path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def write_manifest(store: RunStore, spec: ExperimentSpec, *, invocation: dict, status: dict) -> dict:
    man = _read_manifest(store)
    invocations = [i for i in man.get("invocations", []) if i.get("id") != invocation["id"]]
    invocations.append(invocation)
    man.update({
        "name": spec.name,
        "spec": spec.to_dict(),
        "spec_fingerprint": spec.fingerprint(),
        "packages": package_versions(),
        "git": git_state(),
        "hardware": hardware(),
        "invocations": invocations,
        "status": status,
    })
    for key in ("metric_spec", "models"):
        if key in status:
            man[key] = status[key]
    atomic_write_json(store.manifest_path, man)
    return man


# ---- the engine ----------------------------------------------------------------------------

class _ImageCache:
    """Input images of recent items (loaded lazily from the readers), a few hundred at most."""

    def __init__(self, items, capacity: int = 256):
        self.items, self.capacity = items, capacity
        self._d: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __call__(self, index: int) -> torch.Tensor:
        if index not in self._d:
            self._d[index] = self.items[index].load_input()
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
        self._d.move_to_end(index)
        return self._d[index]


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Exactly the pixels a PNG of ``x`` holds (metrics are computed on what is stored)."""
    return (x.detach().float().cpu().clamp(0, 1) * 255.0).round() / 255.0


def _fit_to(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize an input/target image to the editor's output size the way the paper's editor
    does (``ImageOps.fit``, LANCZOS, centre crop) when the two differ."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    from PIL import ImageOps, Image

    from ip2p.util.io import pil_to_tensor, tensor_to_pil

    return pil_to_tensor(ImageOps.fit(tensor_to_pil(x), (hw[1], hw[0]), method=Image.LANCZOS))


def _fit_mask(m: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape[-2:]) == tuple(hw):
        return m.bool()
    return torch.nn.functional.interpolate(m[None, None].float(), size=hw, mode="nearest")[0, 0] > 0.5


def run_sweep(spec: ExperimentSpec, out: str | os.PathLike, *, base_dir: Path | None = None,
              progress: bool = True, device: str | None = None, shard_rows: int = 64,
              rank: int | None = None, world_size: int | None = None, on_bad_row: str = "raise") -> SweepResult:
    """Run (or complete) the sweep ``spec`` into the run folder ``out``. See the module docstring."""
    t0 = time.time()
    env_rank, env_world, local_rank = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    store = RunStore(out)
    store.root.mkdir(parents=True, exist_ok=True)
    prepare_run_folder(store, spec, rank)
    dist = _maybe_init_distributed(world_size)
    killer = _Killer()
    dev = pick_device(device or spec.device, local_rank)

    items = load_items(spec.dataset, base_dir, on_bad_row=on_bad_row)
    method_specs = {m.key: (i, m) for i, m in enumerate(spec.methods)}
    units = expand_units([(m.key, m.settings()) for m in spec.methods], [ex.item_id for ex in items], spec.seeds)
    # batches are cut from the whole unit list (the same on every rank and every rerun) and
    # dealt to ranks whole: a unit's batch mates never depend on the process count or on where
    # a previous run stopped, so results are bit-identical, not merely equal to float noise
    plan = plan_batches(units, spec.batch_size, rank, world_size)
    mine = [u for b in plan for u in b]
    done = store.done_keys()
    editors: dict[str, Any] = {}  # method key -> (editor, identity), built once per run
    metric_clip = spec.metrics.clip.model_dump() if "clip" in spec.metrics.compute else None
    if done:
        _check_stored_models(store, method_specs, dev, editors, metric_clip)
    todo_batches = [[u for u in b if u.key not in done] for b in plan]
    todo_batches = [b for b in todo_batches if b]
    todo = [u for b in todo_batches for u in b]
    invocation = {"id": f"{int(t0)}-{os.getpid()}", "started": now_iso(), "world_size": world_size,
                  "device": dev, "units_total": len(units), "units_stored_before": len(done & {u.key for u in units})}
    if rank == 0:
        write_manifest(store, spec, invocation=invocation, status={"state": "running"})

    images = _ImageCache(items)
    # published benchmarks (bench.benchmarks): a test set whose items continue one another
    # (MagicBrush's iterative turns) gets each unit's input from the previous turn's output
    chain = turn_chain(spec, items, store, world_size)
    if chain is not None:
        todo_batches = chain.order(todo_batches)
    unit_image = chain.unit_image(images) if chain is not None else (lambda u: images(u.item_index))
    # batch units of one method and one input size together (the editor runs one call per batch)
    stats = {"edit_seconds": 0.0, "metric_seconds": 0.0, "images_per_second": None}
    scorer = None
    pending: list[dict] = []
    shards = 0
    seq = _next_seq(store, rank)
    input_paths: dict = {}  # item index (or ("target", index)) -> stored PNG path
    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="edit", dynamic_ncols=True,
               desc=f"{spec.name}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""),
               disable=not progress, position=rank if world_size > 1 else None, leave=True)
    try:
        for batch in todo_batches:
            label = batch[0].method
            mi, mspec = method_specs[label]
            editor, identity = _cached_editor(editors, label, mspec, mi, dev, metric_clip)
            if scorer is None:
                from bench.scoring import Scorer

                scorer = Scorer(spec.metrics, device=dev, cache_dir=store.root / "cache")
            requests = []
            for u in batch:
                ex = items[u.item_index]
                requests.append(EditRequest(image=unit_image(u), instruction=ex.instruction,
                                            input_caption=ex.input_caption, output_caption=ex.output_caption,
                                            knobs=u.knobs, seed=u.seed, item_id=ex.item_id))
            t1 = time.time()
            outs = _run_by_size(editor, requests)
            stats["edit_seconds"] += time.time() - t1
            _check_outputs(outs, batch, items, label)
            rows = _rows_for_batch(store, spec, batch, outs, items, unit_image, input_paths, mi, mspec,
                                   identity, scorer, stats, editor)
            if chain is not None:
                chain.record(batch, rows)
            pending.extend(rows)
            killer.tick("batch")
            bar.update(len(batch))
            if len(pending) >= shard_rows:
                store.write_shard(pending, rank, seq)
                seq, shards, pending = seq + 1, shards + 1, []
                killer.tick("shard")
        if pending:
            store.write_shard(pending, rank, seq)
            shards += 1
            pending = []
            killer.tick("shard")
    finally:
        bar.close()
    seconds = time.time() - t0
    if stats["edit_seconds"] > 0:
        stats["images_per_second"] = len(todo) / stats["edit_seconds"]
    result = SweepResult(store.root, rank, world_size, len(units), len(mine), len(mine) - len(todo), len(todo),
                         shards, seconds, stats)
    atomic_write_json(store.root / "ranks" / f"r{rank:03d}.json",
                      {**{k: v for k, v in result.__dict__.items() if k != "run_dir"}, "finished": now_iso(),
                       "device": dev})
    if dist is not None:
        dist.barrier()
    if rank == 0:
        df = load_results(store.root)
        stored = set(df["unit_key"]) if len(df) else set()
        missing = sum(1 for u in units if u.key not in stored)
        status = {"state": "complete" if missing == 0 else "incomplete", "rows": int(len(df)),
                  "units_total": len(units), "units_missing": missing}
        if len(df):
            status["metric_spec"] = json.loads(df["metric_spec"].iloc[0])
            status["models"] = {m: json.loads(g["model_identity"].iloc[0]) for m, g in df.groupby("method", sort=False)}
        invocation.update({"finished": now_iso(), "seconds": round(seconds, 2), "units_run_rank0": len(todo),
                           "edit_seconds_rank0": round(stats["edit_seconds"], 2)})
        write_manifest(store, spec, invocation=invocation, status=status)
        finish_run(store.root, spec, items)  # bench.benchmarks: per-turn/category tables, official names
    if dist is not None:
        dist.destroy_process_group()
    return result


def _maybe_init_distributed(world_size: int):
    """A gloo process group for the final barrier when launched by torchrun / accelerate."""
    if world_size <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist


def _next_seq(store: RunStore, rank: int) -> int:
    prefix = f"r{rank:03d}-"
    seqs = [int(p.name.split("-")[1]) for p in store.shard_files() if p.name.startswith(prefix)]
    return max(seqs, default=-1) + 1


def _run_by_size(editor, requests: list[EditRequest]) -> list[torch.Tensor]:
    """``editor.run`` once per input size present in the batch (usually one), outputs in order."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(tuple(r.image.shape), []).append(i)
    outs: list = [None] * len(requests)
    for idx in groups.values():
        res = editor.run([requests[i] for i in idx])
        if len(res) != len(idx):
            raise NonFiniteOutputError(f"editor {getattr(editor, 'name', '?')!r} returned {len(res)} images "
                                       f"for {len(idx)} requests")
        for i, x in zip(idx, res):
            outs[i] = x
    return outs


_EDITORS: "OrderedDict[str, Any]" = OrderedDict()  # loaded editors, reused by later sweeps in this process


def build_editor(mspec, index: int, device: str, metric_clip: dict | None = None):
    """(editor, identity) of method ``mspec`` (spec position ``index``) on ``device``; loaded editors
    are kept for later calls in this process (the last two models), so a caller that builds an
    editor before a sweep (e.g. to read its weights hash) does not make the sweep load it again.
    A factory that declares a ``metric_clip`` parameter also gets the sweep's metric CLIP spec
    (e.g. Text2Live refuses a guide equal to it)."""
    info = get_method(mspec.name)
    model = mspec.model or info.default_model
    extra = {"metric_clip": metric_clip} if "metric_clip" in inspect.signature(info.factory).parameters else {}
    key = json.dumps([mspec.name, model, device, mspec.options, extra], sort_keys=True, default=str)
    if key not in _EDITORS:
        _EDITORS[key] = info.factory(model=model, device=device, **mspec.options, **extra)
        while len(_EDITORS) > 2:  # keep memory bounded: the last two models only
            _EDITORS.popitem(last=False)
    editor = _EDITORS[key]
    accepted = set(editor.knobs) | set(info.knobs)
    for si, setting in enumerate(mspec.settings()):
        unknown = sorted(set(setting) - accepted)
        if unknown:
            raise SpecError(f"methods[{index}].knobs.{unknown[0]}: the loaded editor {editor.name!r} has no such knob; "
                            f"its knobs are {sorted(editor.knobs)}")
    identity = check_identity(editor.identity(), mspec.name)
    identity.setdefault("method", mspec.name)
    identity.setdefault("source", model)
    return editor, identity


def _check_outputs(outs, batch, items, label) -> None:
    if len(outs) != len(batch):
        raise NonFiniteOutputError(f"method {label!r} returned {len(outs)} images for {len(batch)} requests")
    for u, x in zip(batch, outs):
        if x.ndim != 3 or x.shape[0] != 3:
            raise NonFiniteOutputError(f"method {label!r}, item {u.item_id!r}, knobs {u.knobs_json}: "
                                       f"expected a [3, H, W] image, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise NonFiniteOutputError(f"method {label!r}, item {u.item_id!r}, knobs {u.knobs_json}, seed {u.seed}: "
                                       "output has NaN or Inf values")


def _cached_editor(editors: dict, label: str, mspec, index: int, device: str, metric_clip: dict | None = None):
    """(editor, identity) of a method, built on first use and kept in ``editors``."""
    if label not in editors:
        editors[label] = build_editor(mspec, index, device, metric_clip)
    return editors[label]


def _check_stored_models(store, method_specs: dict, device: str, editors: dict, metric_clip: dict | None = None) -> None:
    """Refuse to extend stored results made with other weights: rows of one method must share one model.
    The editors it builds are kept in ``editors`` for the sweep itself."""
    for method, hashes in store.model_hashes().items():
        if method not in method_specs:
            continue
        index, mspec = method_specs[method]
        _, identity = _cached_editor(editors, method, mspec, index, device, metric_clip)
        now, stored = identity_hash(identity), sorted(hashes)
        if stored != [now]:
            raise SpecError(f"methods[{index}] ({mspec.name}, model {identity.get('source')!r}): the results stored in "
                            f"{store.root} were made with weights {', '.join(stored)}, the model now loaded has {now}; "
                            "write to a new output folder (or delete the old one) instead of mixing them")


def identity_hash(identity: dict) -> str:
    """The weights hash an editor identity names (required by ``ip2p.protocol.check_identity``)."""
    return str(identity["weights_hash"])


def _metric_input(editor, image: torch.Tensor, knobs: dict, hw: tuple[int, int]) -> torch.Tensor:
    """The input as the editor processed it (``Editor.metric_input``), at the output's size: the
    reference image of the metrics."""
    x = editor.metric_input(EditRequest(image=image, instruction="", knobs=knobs))
    return x if tuple(x.shape[-2:]) == tuple(hw) else _fit_to(x, hw)


def _rows_for_batch(store, spec, batch, outs, items, unit_image, input_paths, mi, mspec, identity, scorer, stats, editor):
    edited, inputs, targets, masks, out_paths = [], [], [], [], []
    for u, x in zip(batch, outs):
        data = png_bytes(x)
        out_paths.append(store.save_png_bytes(data) if spec.save_images else None)
        q = _quantize(x)
        hw = tuple(q.shape[-2:])
        ex = items[u.item_index]
        if u.item_index not in input_paths and spec.save_images:
            input_paths[u.item_index] = store.save_png(unit_image(u))
        edited.append(q)
        inputs.append(_quantize(_metric_input(editor, unit_image(u), u.knobs, hw)))
        t = ex.load_target()
        targets.append(None if t is None else _quantize(_fit_to(t, hw)))
        m = ex.load_mask()
        masks.append(None if m is None else _fit_mask(m, hw))
    t1 = time.time()
    metrics = scorer.score(inputs, edited, [items[u.item_index].input_caption for u in batch],
                           [items[u.item_index].output_caption for u in batch], targets, masks)
    stats["metric_seconds"] += time.time() - t1
    identity_json = json.dumps(identity, sort_keys=True, default=str)
    metric_spec = json.dumps(scorer.spec(), sort_keys=True, default=str)
    model_hash = identity_hash(identity)
    rows = []
    for u, x, opath, met in zip(batch, edited, out_paths, metrics):
        ex = items[u.item_index]
        target_path = None
        if spec.save_images and ex.target_image is not None:
            key = ("target", u.item_index)
            if key not in input_paths:
                input_paths[key] = store.save_png(ex.load_target())
            target_path = input_paths[key]
        row = {
            "unit_key": u.key, "method": u.method, "method_name": mspec.name, "method_index": mi,
            "model": mspec.model or get_method(mspec.name).default_model,
            "knobs": u.knobs_json, "setting_index": u.setting_index,
            "item_id": u.item_id, "item_index": u.item_index, "seed": u.seed,
            "category": ex.category, "instruction": ex.instruction,
            "input_caption": ex.input_caption, "output_caption": ex.output_caption,
            "input_image": input_paths.get(u.item_index), "output_image": opath, "target_image": target_path,
            "height": int(x.shape[-2]), "width": int(x.shape[-1]),
        }
        for k, v in u.knobs.items():
            row[f"knob_{k}"] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
        row.update(met)
        row.update({"metric_spec": metric_spec, "model_identity": identity_json, "model_hash": model_hash})
        rows.append(row)
    return rows
