"""The paper's CLIP filter applied from stored metadata (REFERENCE.md, "Data generation").

A pair is kept if image-image similarity >= 0.75, directional similarity >= 0.2, and the input and
output images match their captions (sim_0, sim_1 >= 0.2); among the kept pairs of one prompt, the
``max_per_prompt`` (4) with the highest directional similarity survive. The similarities are read
from ``EditExample.metadata`` (keys ``clip_sim_image``, ``clip_sim_dir``, ``clip_sim_0``,
``clip_sim_1``, as in the official ``metadata.jsonl``); computing them is the metrics' job.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from ip2p.data.rows import BadRowLog
from ip2p.data.types import EditExample

METADATA_KEYS = {
    "min_image": "clip_sim_image",
    "min_direction": "clip_sim_dir",
    "min_sim_0": "clip_sim_0",
    "min_sim_1": "clip_sim_1",
}


@dataclass(frozen=True)
class ClipFilter:
    """Thresholds of the CLIP filter; a threshold of None is not applied."""

    min_image: float | None = 0.75  # cos(I0, I1); the official code's default is 0.7
    min_direction: float | None = 0.2  # cos(I1 - I0, T1 - T0)
    min_sim_0: float | None = 0.2  # cos(I0, T0)
    min_sim_1: float | None = 0.2  # cos(I1, T1)
    max_per_prompt: int | None = 4  # keep the best by directional similarity

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_key(ex: EditExample) -> str:
    """The prompt a pair was generated from: ``metadata['prompt_id']`` or its three texts."""
    pid = ex.metadata.get("prompt_id")
    if pid is not None:
        return str(pid)
    return "\x00".join((ex.input_caption, ex.instruction, ex.output_caption))


def apply_clip_filter(examples: Sequence[EditExample], flt: ClipFilter, bad: BadRowLog) -> list[EditExample]:
    """Examples passing ``flt``, in their original order.

    A row lacking a similarity that a threshold needs is a bad row (field ``metadata.<key>``).
    """
    needed = [(getattr(flt, attr), key) for attr, key in METADATA_KEYS.items() if getattr(flt, attr) is not None]
    if flt.max_per_prompt is not None:
        needed_keys = {k for _, k in needed} | {"clip_sim_dir"}
    else:
        needed_keys = {k for _, k in needed}
    passed: list[tuple[int, EditExample]] = []
    for i, ex in enumerate(examples):
        values = {}
        ok = True
        for key in sorted(needed_keys):
            v = ex.metadata.get(key)
            try:
                values[key] = float(v)
            except (TypeError, ValueError):
                bad.report(ex.source or ex.item_id, f"metadata.{key}",
                           "missing CLIP similarity needed by the CLIP filter" if v is None else f"not a number: {v!r}")
                ok = False
                break
        if not ok:
            continue
        if all(values[key] >= threshold for threshold, key in needed):
            passed.append((i, ex))
    if flt.max_per_prompt is None:
        return [ex for _, ex in passed]
    groups: dict[str, list[tuple[int, EditExample]]] = {}
    for i, ex in passed:
        groups.setdefault(prompt_key(ex), []).append((i, ex))
    keep: set[int] = set()
    for members in groups.values():
        # highest directional similarity first; ties broken by original order (deterministic)
        members.sort(key=lambda p: (-float(p[1].metadata["clip_sim_dir"]), p[0]))
        keep.update(i for i, _ in members[: flt.max_per_prompt])
    return [ex for i, ex in passed if i in keep]
