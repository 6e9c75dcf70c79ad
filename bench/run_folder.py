"""The bookkeeping of one run folder, on top of its store (``bench.store``: shards, images, locks).

One run folder, one experiment at a time: a sweep takes the folder's locks to check the spec and for
its whole run (``prepare_run_folder``). The same spec may run from several processes at once (the
ranks of one launch, or a second identical invocation); a different spec is refused with a
``SpecError`` while any sweep runs or once any row is stored. A folder whose sweeps all died before
storing a row is taken over by the next spec. ``write_manifest`` records each invocation and the
run's status with its provenance (``ip2p.util.provenance``). Before running, the stored images of a
rank's done units are verified by their content hash (``stored_images_to_repair``): a missing or
corrupt edited image is regenerated, a corrupt input or target image is rewritten from the dataset,
and temporary files of killed writers are removed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from ip2p.errors import SpecError
from ip2p.util.io import atomic_write_json, atomic_write_text, read_json_or, remove_orphaned_temp_files
from ip2p.util.provenance import git_state, hardware, package_versions

from bench.spec import ExperimentSpec
from bench.store import QUARANTINE_DIR, RunStore, bad_stored_images, load_results

log = logging.getLogger("ip2p.bench")


def check_output_folder(folder: Path, what: str = "--out") -> None:
    """Refuse an output folder that is a file or cannot be written, before any work is done."""
    from ip2p.util.io import check_output_path

    check_output_path(folder, option=what, kind="folder")


def prepare_run_folder(store: RunStore, spec: ExperimentSpec, rank: int):
    """Under the folder's mutex: refuse a folder that holds results of a different spec or that a
    sweep of a different spec is running into; record the spec; remove orphaned temporary files
    when no other sweep is running; register this process as running (``.active``, shared).
    Returns the open ``.active`` file: close it when the sweep ends."""
    fp_path = store.root / "spec.json"
    with store.mutex():
        others = store.others_active()
        old_fp = None
        if fp_path.exists():
            old_fp = read_json_or(fp_path, {}).get("fingerprint") or "(unreadable spec.json)"
        if old_fp is not None and old_fp != spec.fingerprint():
            _check_takeover(store, spec, old_fp, others)
        _check_batch_size(store, read_json_or(fp_path, {}).get("spec"), spec)
        if not others:
            _clean_up(store)
        active = store.hold_active()
        try:
            if rank == 0 or old_fp != spec.fingerprint():
                atomic_write_json(fp_path, {"fingerprint": spec.fingerprint(), "spec": spec.to_dict()})
                atomic_write_text(store.root / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
        except BaseException:
            active.close()
            raise
    return active


def _check_takeover(store: RunStore, spec: ExperimentSpec, old_fp: str, others: bool) -> None:
    """A folder of another spec may be taken over only when it stores no row and no sweep runs."""
    if store.shard_files():
        raise SpecError(
            f"{store.root} holds results of a different experiment (spec fingerprint "
            f"{old_fp} != {spec.fingerprint()}: dataset, models or metrics changed). "
            "Use another --out folder; grids, limits and seeds may grow within one folder."
        )
    if others:
        raise SpecError(
            f"{store.root}: a sweep of a different experiment (spec fingerprint {old_fp}) is running "
            f"into this folder now; wait for it to end or use another --out folder"
        )
    log.warning("%s: taking over a folder whose earlier sweep (spec %s) stored no rows", store.root, old_fp)


def _clean_up(store: RunStore) -> None:
    """With no other sweep running: remove killed writers' temporary files, quarantine bad shards."""
    removed = remove_orphaned_temp_files(store.root)
    if removed:
        log.info("removed %d orphaned temporary file(s) of killed writers", len(removed))
    moved = store.quarantine_bad_shards()  # healed like a stored image: their units run again
    if moved:
        first = next(iter(moved))
        log.warning("%s: moved %d damaged or stray file(s) out of shards/ to %s/ (their units run again): "
                    "%s: %s", store.root, len(moved), QUARANTINE_DIR, first.name, moved[first])


def _check_batch_size(store: RunStore, old_spec: Any, spec: ExperimentSpec) -> None:
    """Refuse to extend stored results with another ``batch_size``: an edit's float rounding depends
    on its batch mates (batched matrix products), so a rerun in other batches changes some stored
    outputs by an 8-bit step now and then. batch_size is therefore checked, like the weights."""
    old = old_spec.get("batch_size") if isinstance(old_spec, dict) else None
    if isinstance(old, int) and old != spec.batch_size and store.shard_files():
        raise SpecError(f"batch_size: {spec.batch_size}, but the results stored in {store.root} were made with "
                        f"batch_size {old}; an edit's rounding depends on its batch mates, so resuming in other "
                        f"batches would change stored outputs. Use batch_size {old}, or another --out folder")


def _read_manifest(store: RunStore) -> dict:
    man = read_json_or(store.manifest_path, {})  # a damaged manifest is rewritten, never a traceback
    return man if isinstance(man.get("invocations", []), list) else {}


def write_manifest(store: RunStore, spec: ExperimentSpec, *, invocation: dict, status: dict) -> dict:
    """Record ``invocation`` (in start order; updated in place) and the run's ``status``, under the
    folder's mutex so that concurrent invocations do not lose each other's entries."""
    with store.mutex():
        return _write_manifest_locked(store, spec, invocation=invocation, status=status)


def _write_manifest_locked(store: RunStore, spec: ExperimentSpec, *, invocation: dict, status: dict) -> dict:
    man = _read_manifest(store)
    invocations = [i for i in man.get("invocations", []) if isinstance(i, dict)]
    ids = [i.get("id") for i in invocations]
    if invocation["id"] in ids:
        invocations[ids.index(invocation["id"])] = invocation
    else:
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


def next_seq(store: RunStore, rank: int) -> int:
    """The sequence number of this rank's next shard (one past its highest stored)."""
    prefix = f"r{rank:03d}-"
    seqs = [int(p.name.split("-")[1]) for p in store.shard_files() if p.name.startswith(prefix)]  # names checked
    return max(seqs, default=-1) + 1


def stored_images_to_repair(store: RunStore, spec: ExperimentSpec, mine, done: set, items, images) -> dict[str, str]:
    """Verify the stored images of this rank's done units: ``{unit_key: stored output image}`` of
    units whose edited image is missing or corrupt (they run again); corrupt input and target
    images are rewritten from the dataset now (``images``: the items' image cache)."""
    if not spec.save_images or not done:
        return {}
    keys = {u.key for u in mine} & done
    if not keys:
        return {}
    df = load_results(store.root)
    df = df[df["unit_key"].isin(keys)]
    bad = bad_stored_images(store.root, df)
    if bad.empty:
        return {}
    rewritten = _rewrite_inputs(store, bad, items, images)
    out = bad[bad["column"] == "output_image"]
    repair = dict(zip(out["unit_key"], out["file"]))
    if repair or rewritten:
        log.warning("%s: %d stored edited image(s) missing or corrupt (regenerating), %d input/target image(s) "
                    "rewritten: %s", store.root, len(repair), len(rewritten), ", ".join(sorted(set(bad["file"]))[:5]))
    return repair


def _rewrite_inputs(store: RunStore, bad, items, images) -> set:
    """Rewrite the bad stored input and target images from the dataset; the files rewritten."""
    index_of = {ex.item_id: i for i, ex in enumerate(items)}
    rewritten = set()
    for r in bad.itertuples():
        if r.column == "output_image" or r.file in rewritten or r.item_id not in index_of:
            continue
        i = index_of[r.item_id]
        x = images(i) if r.column == "input_image" else images.target(i)
        if x is not None and store.save_png(x) == r.file:
            rewritten.add(r.file)
        else:
            log.warning("%s: stored %s %s could not be rewritten from the dataset (its pixels changed)",
                        store.root, r.column, r.file)
    return rewritten


__all__ = ["check_output_folder", "prepare_run_folder", "write_manifest", "next_seq", "stored_images_to_repair"]
