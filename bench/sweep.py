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

One run folder, one experiment at a time (``bench.run_folder``: the spec check, the manifest and
the repair of stored images, on the store's locks, ``bench.store``). A repaired unit's edited image
is regenerated: its row kept when the new image is identical, replaced otherwise. The parts the
engine drives are modules of their own: the processes (``bench.distributed``), the items and their
images (``bench.data``), the editors (``bench.editors``) and the rows (``bench.rows``).

Test hook: ``IP2P_BENCH_KILL_AFTER=shard:K`` (or ``batch:K``) sends SIGKILL to this process right
after its K-th shard is written (or right after its K-th batch is edited and its images stored,
before its rows are flushed).
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ip2p.errors import SpecError
from ip2p.protocol import EditRequest
from ip2p.util.devices import check_device
from ip2p.util.faults import KillSwitch
from ip2p.util.io import atomic_write_json
from ip2p.util.provenance import now_iso

from bench.benchmarks import finish_run, turn_chain
from bench.data import ItemImages, drop_unreadable_items, load_items
from bench.distributed import dist_env, maybe_init_distributed, pick_device
from bench.editors import cached_editor, check_outputs, check_stored_models, run_by_size
from bench.rows import rows_for_batch
from bench.run_folder import check_output_folder, next_seq, prepare_run_folder, stored_images_to_repair, write_manifest
from bench.spec import ExperimentSpec
from bench.store import UNITS_FILE, RunStore, load_results
from bench.units import expand_units, plan_batches

log = logging.getLogger("ip2p.bench")

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


def check_sweep_options(*, shard_rows: int, on_bad_row: str) -> None:
    if shard_rows < 1:
        raise SpecError(f"--shard-rows {shard_rows}: must be >= 1 (rows per result shard)")
    if on_bad_row not in ("raise", "skip"):
        raise SpecError(f"--on-bad-row {on_bad_row!r}: must be raise or skip")


def run_sweep(spec: ExperimentSpec, out: str | os.PathLike, *, base_dir: Path | None = None,
              progress: bool = True, device: str | None = None, shard_rows: int = 64,
              rank: int | None = None, world_size: int | None = None, on_bad_row: str = "raise") -> SweepResult:
    """Run (or complete) the sweep ``spec`` into the run folder ``out``. See the module docstring."""
    t0 = time.time()
    env_rank, env_world, local_rank = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    check_sweep_options(shard_rows=shard_rows, on_bad_row=on_bad_row)
    dev = pick_device(device or spec.device, local_rank)
    check_device(dev, "--device" if device else "device (spec)")
    store = RunStore(out)
    check_output_folder(store.root)
    store.root.mkdir(parents=True, exist_ok=True)
    active = prepare_run_folder(store, spec, rank)
    registered: list[dict] = []  # the manifest's entry of this invocation, once rank 0 wrote it
    try:
        return _run_registered(spec, store, base_dir=base_dir, progress=progress, dev=dev, shard_rows=shard_rows,
                               rank=rank, world_size=world_size, on_bad_row=on_bad_row, t0=t0,
                               invocation_out=registered)
    except BaseException as e:
        invocation = registered[0] if registered else None
        if rank == 0 and invocation is not None and not isinstance(e, KeyboardInterrupt):
            invocation.update({"finished": now_iso(), "failed": f"{type(e).__name__}: {e}"})
            try:
                write_manifest(store, spec, invocation=invocation, status={"state": "failed"})
            except Exception:  # the original error matters more
                pass
        raise
    finally:
        active.close()


# ---- what this rank does ---------------------------------------------------------------------

@dataclass
class _Work:
    """This rank's share of a sweep: the items (with their image cache and the rows skipped while
    opening them), every unit, this rank's units (``mine``), the keys stored before (``done``, units
    to ``repair`` excluded), the batches to run and the units they add (``todo``)."""

    items: list
    images: ItemImages
    bad_rows: list
    method_specs: dict
    units: list
    mine: list
    done: set
    repair: dict
    batches: list
    todo: list


def _plan_work(spec: ExperimentSpec, store: RunStore, base_dir, on_bad_row: str, rank: int, world_size: int) -> _Work:
    bad_rows: list = []
    items = load_items(spec.dataset, base_dir, on_bad_row=on_bad_row, bad_rows=bad_rows)
    method_specs = {m.key: (i, m) for i, m in enumerate(spec.methods)}
    _check_max_units(spec, items)
    units = expand_units([(m.key, m.settings()) for m in spec.methods], [ex.item_id for ex in items], spec.seeds,
                         spec.item_limits())
    # batches are cut from the whole unit list (the same on every rank and every rerun) and
    # dealt to ranks whole: a unit's batch mates never depend on the process count or on where
    # a previous run stopped, so results are bit-identical, not merely equal to float noise
    plan = plan_batches(units, spec.batch_size, rank, world_size)
    mine = [u for b in plan for u in b]
    done = store.done_keys()
    images = ItemImages(items)
    repair = stored_images_to_repair(store, spec, mine, done, items, images)
    done -= set(repair)
    batches = []
    for b in plan:
        need = [u for u in b if u.key not in done]
        if need:  # a repair reruns its whole batch: the same batch mates give the same bits
            batches.append(b if any(u.key in repair for u in b) else need)
    todo = [u for b in batches for u in b if u.key not in done]
    return _Work(items, images, bad_rows, method_specs, units, mine, done, repair, batches, todo)


def _check_max_units(spec: ExperimentSpec, items) -> None:
    n_settings = sum(m.n_settings() for m in spec.methods)
    n_units = n_settings * len(items) * len(spec.seeds)
    if n_units > spec.max_units:
        raise SpecError(f"{spec.name}: {n_settings:,} settings x {len(items):,} items x "
                        f"{len(spec.seeds)} seeds = {n_units:,} work units, more than max_units={spec.max_units:,}; "
                        "use dataset.limit, fewer settings or seeds (or raise max_units in the spec / --max-units)")


def _register_invocation(spec: ExperimentSpec, store: RunStore, work: _Work, dev: str, rank: int, world_size: int,
                         t0: float, invocation_out: list) -> dict:
    """This invocation's manifest entry; rank 0 records it (and the units of the spec) as running."""
    invocation = {"id": f"{int(t0)}-{os.getpid()}-{uuid.uuid4().hex[:6]}", "started": now_iso(),
                  "world_size": world_size, "device": dev, "units_total": len(work.units),
                  "units_stored_before": len(work.done & {u.key for u in work.units})}
    if rank == 0:
        atomic_write_json(store.root / UNITS_FILE, {"invocation": invocation["id"], "keys": [u.key for u in work.units]})
        write_manifest(store, spec, invocation=invocation, status={"state": "running", "units_total": len(work.units)})
        invocation_out.append(invocation)
    return invocation


# ---- the run ---------------------------------------------------------------------------------

class _ShardWriter:
    """Rows waiting for their shard: flushed to a new shard of this rank every ``shard_rows`` rows
    (and at the end). A repaired unit's row replaces the stored one only when its image changed
    (``superseded``: the stored rows to drop once the new shards are written)."""

    def __init__(self, store: RunStore, rank: int, shard_rows: int, killer: KillSwitch):
        self.store, self.rank, self.shard_rows, self.killer = store, rank, shard_rows, killer
        self.seq = next_seq(store, rank)
        self.pending: list[dict] = []
        self.new_shards: list[Path] = []
        self.superseded: set[str] = set()

    def add(self, rows: list[dict], work: _Work, stats: dict) -> None:
        for row in rows:
            if row["unit_key"] in work.done:  # a batch mate rerun only for a repair: already stored
                continue
            old = work.repair.get(row["unit_key"])
            if old is None:
                self.pending.append(row)
                continue
            stats["units_repaired"] += 1
            if row["output_image"] != old:  # regenerated differently: the new row replaces the old
                self.superseded.add(row["unit_key"])
                self.pending.append(row)

    def flush(self) -> None:
        self.new_shards.append(self.store.write_shard(self.pending, self.rank, self.seq))
        self.seq, self.pending = self.seq + 1, []
        self.killer.tick("shard")

    def flush_if_full(self) -> None:
        if len(self.pending) >= self.shard_rows:
            self.flush()

    def close(self) -> None:
        """Flush the rows still waiting (at the end of the run)."""
        if self.pending:
            self.flush()

    def drop_superseded(self) -> None:
        """Drop the stored rows that the new shards supersede (repaired units whose image changed)."""
        if self.superseded:
            with self.store.mutex():
                self.store.drop_rows(self.superseded, keep_shards=self.new_shards)


class _BatchEditor:
    """Edits one batch of units and makes their rows: the editor of the batch's method (built once per
    run), the scorer (built on the first batch), the stored input and target paths of the items."""

    def __init__(self, spec: ExperimentSpec, store: RunStore, work: _Work, dev: str, editors: dict,
                 metric_clip: dict | None, unit_image, stats: dict):
        self.spec, self.store, self.work, self.dev, self.editors = spec, store, work, dev, editors
        self.metric_clip, self.unit_image, self.stats = metric_clip, unit_image, stats
        self.scorer = None
        self.input_paths: dict = {}  # item index (or ("target", index)) -> stored PNG path

    def rows(self, batch) -> list[dict]:
        label = batch[0].method
        mi, mspec = self.work.method_specs[label]
        editor, identity = cached_editor(self.editors, label, mspec, mi, self.dev, self.metric_clip)
        if self.scorer is None:
            from bench.scoring import Scorer

            self.scorer = Scorer(self.spec.metrics, device=self.dev, cache_dir=self.store.root / "cache")
        items = self.work.items
        requests = []
        for u in batch:
            ex = items[u.item_index]
            requests.append(EditRequest(image=self.unit_image(u), instruction=ex.instruction,
                                        input_caption=ex.input_caption, output_caption=ex.output_caption,
                                        knobs=u.knobs, seed=u.seed, item_id=ex.item_id, target=ex.target_image))
        t1 = time.time()
        outs = run_by_size(editor, requests)
        self.stats["edit_seconds"] += time.time() - t1
        check_outputs(outs, batch, label)
        return rows_for_batch(self.store, self.spec, batch, outs, items, self.work.images, self.unit_image,
                              self.input_paths, mi, mspec, identity, self.scorer, self.stats, editor)


def _run_registered(spec: ExperimentSpec, store: RunStore, *, base_dir, progress, dev, shard_rows, rank, world_size,
                    on_bad_row, t0, invocation_out: list) -> SweepResult:
    dist = maybe_init_distributed(world_size)
    killer = KillSwitch(KILL_ENV)
    work = _plan_work(spec, store, base_dir, on_bad_row, rank, world_size)
    editors: dict[str, Any] = {}  # method key -> (editor, identity), built once per run
    metric_clip = spec.metrics.clip.model_dump() if "clip" in spec.metrics.compute else None
    if work.done:
        check_stored_models(store, work.method_specs, dev, editors, metric_clip)
    invocation = _register_invocation(spec, store, work, dev, rank, world_size, t0, invocation_out)
    # published benchmarks (bench.benchmarks): a test set whose items continue one another
    # (MagicBrush's iterative turns) gets each unit's input from the previous turn's output
    chain = turn_chain(spec, work.items, store, world_size)
    if chain is not None:
        work.batches = chain.order(work.batches)
    images = work.images
    unit_image = chain.unit_image(images) if chain is not None else (lambda u: images(u.item_index))
    stats = {"edit_seconds": 0.0, "metric_seconds": 0.0, "images_per_second": None, "units_repaired": 0,
             "bad_rows": [r.message() for r in work.bad_rows]}
    stats["shards_quarantined"] = [f"{p.name}: {why}" for p, why in store.quarantined.items()]
    writer = _ShardWriter(store, rank, shard_rows, killer)
    editing = _BatchEditor(spec, store, work, dev, editors, metric_clip, unit_image, stats)
    skipped_items: set[int] = set()
    _edit_batches(spec, work, editing, writer, chain, killer, stats, skipped_items, on_bad_row,
                  progress=progress, rank=rank, world_size=world_size)
    writer.drop_superseded()
    if stats["edit_seconds"] > 0:
        stats["images_per_second"] = len(work.todo) / stats["edit_seconds"]
    stats["items_skipped"] = len(skipped_items)
    result = SweepResult(store.root, rank, world_size, len(work.units), len(work.mine), len(work.mine) - len(work.todo),
                         len(work.todo), len(writer.new_shards), time.time() - t0, stats)
    atomic_write_json(store.root / "ranks" / f"r{rank:03d}.json",
                      {**{k: v for k, v in result.__dict__.items() if k != "run_dir"}, "finished": now_iso(),
                       "device": dev})
    if dist is not None:
        dist.barrier()
    if rank == 0:
        _finish(spec, store, work, invocation, result, skipped_items)
    if dist is not None:
        dist.destroy_process_group()
    return result


def _edit_batches(spec, work: _Work, editing: _BatchEditor, writer: _ShardWriter, chain, killer, stats: dict,
                  skipped_items: set, on_bad_row: str, *, progress: bool, rank: int, world_size: int) -> None:
    """Edit this rank's batches in order, their rows flushed to shards as they fill."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(work.mine), initial=len(work.mine) - len(work.todo), unit="edit", dynamic_ncols=True,
               desc=f"{spec.name}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""),
               disable=not progress, position=rank if world_size > 1 else None, leave=True)
    try:
        for batch in work.batches:
            batch = drop_unreadable_items(batch, work.images, on_bad_row, skipped_items, stats)
            if not batch:
                continue
            rows = editing.rows(batch)
            if chain is not None:
                chain.record(batch, rows)
            writer.add(rows, work, stats)
            killer.tick("batch")
            bar.update(sum(1 for u in batch if u.key not in work.done))
            writer.flush_if_full()
        writer.close()
    finally:
        bar.close()


def _finish(spec: ExperimentSpec, store: RunStore, work: _Work, invocation: dict, result: SweepResult,
            skipped_items: set) -> None:
    """Rank 0, once every rank is done: the run's status in the manifest, the benchmark's tables."""
    df = load_results(store.root)
    stored = set(df["unit_key"]) if len(df) else set()
    missing = sum(1 for u in work.units if u.key not in stored)
    status = {"state": "complete" if missing == 0 else "incomplete", "rows": int(len(df)),
              "units_total": len(work.units), "units_missing": missing}
    if work.bad_rows or skipped_items:
        status["bad_rows"] = len(work.bad_rows) + len(skipped_items)
    if len(df):
        status["metric_spec"] = json.loads(df["metric_spec"].iloc[0])
        status["models"] = {m: json.loads(g["model_identity"].iloc[0]) for m, g in df.groupby("method", sort=False)}
    stats = result.stats
    invocation.update({"finished": now_iso(), "seconds": round(result.seconds, 2), "units_run_rank0": result.units_run,
                       "edit_seconds_rank0": round(stats["edit_seconds"], 2),
                       "units_repaired_rank0": stats["units_repaired"]})
    write_manifest(store, spec, invocation=invocation, status=status)
    finish_run(store.root, spec, work.items)  # bench.benchmarks: per-turn/category tables, official names
