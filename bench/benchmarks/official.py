"""A benchmark run's outputs written again under the benchmark's own file names, to
``<run>/benchmark/official/<setting>/`` (one folder per method, knob setting and seed; ``index.json``
maps folders to settings), so the benchmark's own evaluation scripts read them as they are. The
names come from each benchmark's record (``official_name``); a name that would leave its setting's
folder (it is built from the data set's fields) is refused and listed in the index.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ip2p.data.types import EditExample
from ip2p.util.hashing import hash_bytes
from ip2p.util.io import atomic_write_bytes, atomic_write_json
from ip2p.util.paths import UnsafePathError, safe_name, safe_output_path

log = logging.getLogger("ip2p.bench")

BENCHMARK_DIR = "benchmark"


def setting_folder(method: str, knobs_json: str, seed: int) -> str:
    """One folder name per (method label, knob setting, seed); a label unsafe as a file name is
    mapped to a safe stand-in (``ip2p.util.paths.safe_name``; ``index.json`` keeps the label)."""
    return f"{safe_name(method)}__{hash_bytes(knobs_json.encode())[:10]}__seed{int(seed)}"


def export_official_names(run_dir: Path, official_name: Callable[[EditExample], str | None], df: pd.DataFrame,
                          items: Sequence[EditExample]) -> dict[str, Any]:
    """Copy every stored output to ``official_name(item)``; returns the index."""
    by_id = {ex.item_id: ex for ex in items}
    root = Path(run_dir) / BENCHMARK_DIR / "official"
    index: dict[str, Any] = {}
    refused: list[str] = []
    for r in df.itertuples(index=False):
        ex = by_id.get(r.item_id)
        name = official_name(ex) if ex is not None else None
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
