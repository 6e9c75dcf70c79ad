"""Work units of a sweep: one (method, knob setting, item, seed) each, with a stable key.

The key is a hash of exactly what a result depends on besides the weights, so it names a unit
across reruns, batch sizes and process counts. Batches are cut from the full, ordered unit list and
dealt to ranks whole, so a unit's batch mates are a function of the spec alone.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


def canonical_knobs(knobs: dict[str, Any]) -> str:
    """Knob values as canonical JSON (sorted names), the form stored in result rows."""
    return json.dumps(knobs, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class WorkUnit:
    method: str  # the method's label in the spec (unique)
    knobs: dict[str, Any] = field(hash=False, compare=False)
    knobs_json: str = ""
    item_index: int = 0  # position of the item in the dataset (for stable ordering)
    item_id: str = ""
    seed: int = 0
    setting_index: int = 0  # position of the knob setting in the method's grid

    @property
    def key(self) -> str:
        return unit_key(self.method, self.knobs_json, self.item_id, self.seed)


def unit_key(method: str, knobs_json: str, item_id: str, seed: int) -> str:
    payload = json.dumps([method, knobs_json, item_id, int(seed)], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def expand_units(methods: Sequence[tuple[str, list[dict[str, Any]]]], item_ids: Sequence[str],
                 seeds: Iterable[int], limits: dict[str, int] | None = None) -> list[WorkUnit]:
    """Every unit of a sweep, in (method, item, seed, setting) order.

    ``methods`` is [(label, [knob setting, ...]), ...]. Every setting of a method sees the same items
    and the same seeds (paired comparison across settings, as in the paper's sweep); ``limits`` gives
    a method only the first N items (an expensive baseline on a subset of the same items)."""
    seeds = list(seeds)
    units = []
    for label, settings in methods:
        jsons = [canonical_knobs(s) for s in settings]
        n_items = (limits or {}).get(label) or len(item_ids)
        for ii, item_id in enumerate(item_ids[:n_items]):
            for seed in seeds:
                for si, (s, sj) in enumerate(zip(settings, jsons)):
                    units.append(WorkUnit(label, dict(s), sj, ii, item_id, int(seed), si))
    return units


def plan_batches(units: Sequence[WorkUnit], batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[WorkUnit]]:
    """The batches process ``rank`` runs: ``batches(units)`` dealt round-robin (batch i to rank
    i % world_size). Every rank computes the same cut, so a unit's batch mates are fixed by the
    spec alone (not by the process count, nor by what an interrupted run had finished)."""
    return [b for i, b in enumerate(batches(units, batch_size)) if i % world_size == rank]


def batches(units: Sequence[WorkUnit], batch_size: int) -> list[list[WorkUnit]]:
    """Consecutive chunks; units of one method only per batch (one editor per call)."""
    out: list[list[WorkUnit]] = []
    cur: list[WorkUnit] = []
    for u in units:
        if cur and (len(cur) >= batch_size or cur[0].method != u.method):
            out.append(cur)
            cur = []
        cur.append(u)
    if cur:
        out.append(cur)
    return out
