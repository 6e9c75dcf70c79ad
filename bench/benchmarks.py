"""Published benchmarks inside a sweep: MagicBrush's turn chaining, each benchmark's tables, and its
outputs written again under the benchmark's own file names.

Two hooks of ``bench.sweep.run_sweep`` call this module; everything else about a sweep is unchanged.

**Turn chaining** (``turn_chain``): an item whose ``metadata["chain_from"]`` names another item
(MagicBrush's iterative turns, ``<id>/iter/<N>``) is edited from the output that *the same work
unit* (method, knob setting, seed) produced for that item, not from a ground-truth image. The chain
orders each batch by turn (a batch's units of turn N-1 run before its units of turn N; units of
earlier turns sit in earlier batches because items are listed session by session, turn by turn),
and reads the previous output back from the run's stored PNG, so a chained edit sees exactly the
8-bit pixels the official script would re-read from ``<id>_iter_<N-1>.png``. Resuming: the
previous output is looked up first among this invocation's edits, then among the stored result
rows (``output_image``), so a run killed anywhere continues where it stopped. A chained unit whose
previous turn is in no stored row (another process has not written it yet) stops the sweep with a
SpecError saying so. Iterative MagicBrush runs in one process (a sweep under several processes
is refused before any work), and chaining needs ``save_images``.

**Tables** (``benchmark_tables``, written by ``finish_run`` to ``<run>/benchmark/tables.csv``):
one block per view, each the aggregate (mean, bootstrap 95% interval, ``n_items``) per setting and
category, plus ``<metric>_n_missing`` (rows where the metric is NaN, e.g. text metrics of items
without an output caption):

- MagicBrush: ``per_turn`` (turn_1, independent/turn_N, iterative/turn_N), ``single_turn`` (turn 1
  and every independent turn: the official scorer's "all turn" pairs; with ``benchmark.single_turn:
  first`` only turn 1), ``multi_turn_final`` (each session's last iterative turn, or turn 1 for a
  one-turn session: the scorer's "final turn" pairs);
- Emu Edit and PIE-Bench: ``per_category`` (task / editing type);
- EditWorld: ``per_category`` (instruction category) and ``per_branch`` (text-to-image / video);
- other data sets: ``per_category``.

**Official names** (``export_official_names``, to ``<run>/benchmark/official/<setting>/``, one
folder per method, knob setting and seed; ``index.json`` maps folders to settings):
MagicBrush ``<id>/<id>_1.png``, ``<id>/<id>_inde_<N>.png``, ``<id>/<id>_iter_<N>.png`` (the layout its
``evaluation/image_eval.py --generated_path`` reads); PIE-Bench ``annotation_images/<image_path>``
(the path its ``evaluate.py`` joins to a method's folder; PNG bytes under the release's file name,
which PIL opens by content); Emu Edit ``<split>/<task>/<idx>.png``; EditWorld ``<item id>.png``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from ip2p.data.types import EditExample
from ip2p.errors import SpecError
from ip2p.util.hashing import hash_bytes
from ip2p.util.io import atomic_write_bytes, atomic_write_json, atomic_write_text, load_image

from ip2p.util.paths import UnsafePathError, safe_name, safe_output_path

from bench.units import WorkUnit, unit_key

log = logging.getLogger("ip2p.bench")

BENCHMARK_DIR = "benchmark"


# ---- turn chaining -------------------------------------------------------------------------

class TurnChain:
    """Inputs of chained items (see the module docstring)."""

    def __init__(self, items: Sequence[EditExample], store):
        self.items = items
        self.store = store
        index = {ex.item_id: i for i, ex in enumerate(items)}
        self.prev: dict[int, int] = {}
        for i, ex in enumerate(items):
            src = ex.metadata.get("chain_from")
            if src is None:
                continue
            if src not in index:
                raise SpecError(f"item {ex.item_id!r}: it continues item {src!r}, which the dataset selection does not hold "
                                "(a limit or category filter dropped an earlier turn; select whole sessions)")
            self.prev[i] = index[src]
        self.depth: dict[int, int] = {}
        for i in range(len(items)):
            self._depth(i)
        self.outputs: dict[str, str] = {}  # unit key -> stored output PNG (this invocation)
        self._stored: dict[str, str] | None = None

    def _depth(self, i: int) -> int:
        if i not in self.depth:
            chain, j = [], i
            while j in self.prev and j not in self.depth:
                chain.append(j)
                j = self.prev[j]
            base = self.depth.get(j, 0)
            for k in reversed(chain):
                base += 1
                self.depth[k] = base
            self.depth.setdefault(i, base)
        return self.depth[i]

    def order(self, batches: list[list[WorkUnit]]) -> list[list[WorkUnit]]:
        """Each batch split into runs of one turn depth, lowest first (earlier turns first)."""
        out = []
        for b in batches:
            for d in sorted({self.depth[u.item_index] for u in b}):
                out.append([u for u in b if self.depth[u.item_index] == d])
        return out

    def previous_key(self, u: WorkUnit) -> str:
        prev = self.items[self.prev[u.item_index]]
        return unit_key(u.method, u.knobs_json, prev.item_id, u.seed)

    def _stored_outputs(self) -> dict[str, str]:
        if self._stored is None:
            df = self.store.load()
            self._stored = dict(zip(df["unit_key"], df["output_image"])) if len(df) and "output_image" in df else {}
        return self._stored

    def previous_output(self, u: WorkUnit) -> str:
        key = self.previous_key(u)
        path = self.outputs.get(key) or self._stored_outputs().get(key)
        if not path:
            self._stored = None  # another process may have written it since
            path = self._stored_outputs().get(key)
        if not path:
            prev = self.items[self.prev[u.item_index]]
            raise SpecError(f"item {self.items[u.item_index].item_id!r} ({u.method}, knobs {u.knobs_json}, seed {u.seed}): "
                            f"its input is the output of item {prev.item_id!r}, which no stored row holds yet; "
                            "iterative (multi-turn) editing runs in one process")
        return path

    def unit_image(self, images: Callable[[int], torch.Tensor]) -> Callable[[WorkUnit], torch.Tensor]:
        def image(u: WorkUnit) -> torch.Tensor:
            if u.item_index not in self.prev:
                return images(u.item_index)
            return load_image(self.store.root / self.previous_output(u), what=f"previous turn's output for {u.item_id!r}")
        return image

    def record(self, batch: Sequence[WorkUnit], rows: Sequence[dict]) -> None:
        """Remember this batch's outputs; a chained row's ``input_image`` is its previous output."""
        for u, row in zip(batch, rows):
            if row.get("output_image"):
                self.outputs[u.key] = row["output_image"]
            if u.item_index in self.prev:
                row["input_image"] = self.previous_output(u)
                row["chained_from"] = self.items[self.prev[u.item_index]].item_id


def turn_chain(spec, items: Sequence[EditExample], store, world_size: int = 1) -> TurnChain | None:
    """The chain of a sweep whose items continue one another, else None. Refused before any work
    when it cannot hold: several processes, or no stored images."""
    if not any("chain_from" in ex.metadata for ex in items):
        return None
    if world_size > 1:
        raise SpecError(f"dataset.options.turn_mode: iterative (multi-turn) editing runs in one process (WORLD_SIZE is "
                        f"{world_size}); run it without torchrun, or use turn_mode: independent under several processes")
    if not spec.save_images:
        raise SpecError("save_images: iterative (multi-turn) editing reads each turn's input back from the stored "
                        "output of the previous turn; set save_images: true")
    return TurnChain(items, store)


# ---- tables --------------------------------------------------------------------------------

def _magicbrush_views(df: pd.DataFrame, single_turn: str) -> dict[str, pd.DataFrame]:
    parts = df["item_id"].str.split("/")
    img_id = parts.str[0]
    mode = parts.map(lambda p: "single" if len(p) == 2 else {"inde": "independent", "iter": "iterative"}.get(p[1], p[1]))
    turn = parts.map(lambda p: int(p[-1]))
    views = {"per_turn": df}
    single = df[(mode == "single") | ((mode == "independent") & (single_turn == "all"))].copy()
    single["category"] = "single_turn" if single_turn == "all" else "turn_1"
    views["single_turn"] = single
    # final turn per session: the last iterative turn, else turn 1
    key = df[["method", "knobs", "seed"]].astype(str).agg("|".join, axis=1) + "|" + img_id
    chained = df[(mode == "iterative") | (mode == "single")].assign(_key=key, _turn=turn)
    last = chained.loc[chained.groupby("_key")["_turn"].idxmax()] if len(chained) else chained
    final = last.drop(columns=["_key", "_turn"]).copy()
    final["category"] = "multi_turn_final"
    views["multi_turn_final"] = final
    return views


def benchmark_views(kind: str, df: pd.DataFrame, items: Sequence[EditExample], benchmark_spec) -> dict[str, pd.DataFrame]:
    if kind == "magicbrush" and df["item_id"].str.contains("/").all() and \
            any("turn_mode" in ex.metadata for ex in items):
        return _magicbrush_views(df, benchmark_spec.single_turn)
    views = {"per_category": df}
    if kind == "editworld":
        branch = {ex.item_id: ex.metadata.get("branch") or "unknown" for ex in items}
        views["per_branch"] = df.assign(category=df["item_id"].map(branch))
    return views


def benchmark_tables(kind: str, df: pd.DataFrame, items: Sequence[EditExample], benchmark_spec,
                     n_boot: int = 1000) -> pd.DataFrame:
    """Every view's aggregate in one frame, with a ``view`` column and ``<metric>_n_missing``."""
    from bench.aggregate import ALL, aggregate, metric_columns

    out = []
    for view, vdf in benchmark_views(kind, df, items, benchmark_spec).items():
        if vdf.empty:
            continue
        agg = aggregate(vdf, n_boot=n_boot, by_category=True)
        if view != "per_turn" and view != "per_category" and view != "per_branch":
            agg = agg[agg["category"] == ALL].assign(category=vdf["category"].iloc[0])
        metrics = metric_columns(vdf)
        miss = []
        for _, r in agg.iterrows():
            sub = vdf[(vdf["method"] == r["method"]) & (vdf["knobs"] == r["knobs"])]
            if r["category"] != ALL and r["category"] in set(vdf["category"].astype(str)):
                sub = sub[sub["category"].astype(str) == r["category"]]
            miss.append({f"{m}_n_missing": int(sub[m].isna().sum()) for m in metrics})
        agg = pd.concat([agg.reset_index(drop=True), pd.DataFrame(miss)], axis=1)
        agg.insert(0, "view", view)
        out.append(agg)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


# ---- official names ------------------------------------------------------------------------

def official_name(kind: str, ex: EditExample) -> str | None:
    """The path (relative to a setting's folder) the benchmark's own tools expect for this item's output."""
    meta = ex.metadata
    if kind == "magicbrush" and "official_name" in meta:
        return f"{meta['img_id']}/{meta['official_name']}"
    if kind == "pie_bench" and meta.get("image_path"):
        return f"annotation_images/{meta['image_path']}"
    if kind == "emu_edit":
        return f"{ex.item_id}.png"
    if kind == "editworld":
        return f"{ex.item_id}.png"
    return None


def setting_folder(method: str, knobs_json: str, seed: int) -> str:
    """One folder name per (method label, knob setting, seed); a label unsafe as a file name is
    mapped to a safe stand-in (``ip2p.util.paths.safe_name``; ``index.json`` keeps the label)."""
    return f"{safe_name(method)}__{hash_bytes(knobs_json.encode())[:10]}__seed{int(seed)}"


def export_official_names(run_dir: Path, kind: str, df: pd.DataFrame, items: Sequence[EditExample]) -> dict[str, Any]:
    """Copy every stored output to its official name (see the module docstring); returns the index."""
    by_id = {ex.item_id: ex for ex in items}
    root = Path(run_dir) / BENCHMARK_DIR / "official"
    index: dict[str, Any] = {}
    refused: list[str] = []
    for r in df.itertuples(index=False):
        ex = by_id.get(r.item_id)
        name = official_name(kind, ex) if ex is not None else None
        if name is None or not isinstance(r.output_image, str) or not r.output_image:
            continue
        folder = setting_folder(r.method, r.knobs, r.seed)
        index.setdefault(folder, {"method": r.method, "knobs": json.loads(r.knobs), "seed": int(r.seed), "files": 0})
        try:  # the name comes from the data set's fields: it may not leave the setting's folder
            dest = safe_output_path(root / folder, name, what=f"official name of item {r.item_id!r}")
        except UnsafePathError as e:
            index[folder].setdefault("refused", []).append({"item_id": r.item_id, "name": name, "why": str(e)})
            refused.append(str(e))
            continue
        data = (Path(run_dir) / r.output_image).read_bytes()
        if not dest.is_file() or dest.read_bytes() != data:
            atomic_write_bytes(dest, data)
        index[folder]["files"] += 1
    if index:
        atomic_write_json(root / "index.json", index)
    if refused:
        log.warning("%s: %d output(s) not written under an official name: %s", root, len(refused), refused[0])
    return index


def finish_run(run_dir: Path, spec, items: Sequence[EditExample]) -> dict[str, Path]:
    """After a sweep (rank 0): the benchmark tables and, for a published test set, its official names."""
    from bench.store import current_rows, load_results

    df, _ = current_rows(run_dir, load_results(run_dir))
    if df.empty:
        return {}
    kind = spec.dataset.kind
    out: dict[str, Path] = {}
    tables = benchmark_tables(kind, df, items, spec.benchmark)
    if not tables.empty:
        out["tables"] = atomic_write_text(Path(run_dir) / BENCHMARK_DIR / "tables.csv", tables.to_csv(index=False))
    if spec.benchmark.official_names and spec.save_images and kind in ("magicbrush", "pie_bench", "emu_edit", "editworld"):
        export_official_names(run_dir, kind, df, items)
        out["official"] = Path(run_dir) / BENCHMARK_DIR / "official"
    return out
