"""MagicBrush's turn chaining inside a sweep: an item whose ``metadata["chain_from"]`` names another
item (iterative turns, ``<id>/iter/<N>``) is edited from the output that *the same work unit*
(method, knob setting, seed) produced for that item, not from a ground-truth image.

The chain orders each batch by turn (a batch's units of turn N-1 run before its units of turn N; units of
earlier turns sit in earlier batches because items are listed session by session, turn by turn),
and reads the previous output back from the run's stored PNG, so a chained edit sees exactly the
8-bit pixels the official script would re-read from ``<id>_iter_<N-1>.png``. Resuming: the
previous output is looked up first among this invocation's edits, then among the stored result
rows (``output_image``), so a run killed anywhere continues where it stopped. A chained unit whose
previous turn is in no stored row (another process has not written it yet) stops the sweep with a
SpecError saying so. Iterative MagicBrush runs in one process (a sweep under several processes
is refused before any work), and chaining needs ``save_images``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ip2p.data.types import EditExample
from ip2p.errors import SpecError
from ip2p.util.io import load_image

from bench.units import WorkUnit, unit_key


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
