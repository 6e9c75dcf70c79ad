"""``ip2p data filter``: the paper's CLIP filter run on a folder of generated pairs.

For every complete pair of every prompt folder (a ``metadata.jsonl`` row with both images; see
``ip2p.data.pairs``) the four similarities are computed from the JPEG files with a
``ClipSimilarity`` (embeddings through the metrics cache, so a rerun encodes nothing twice) and
written into the pair's metadata row (``clip_sim_0, clip_sim_1, clip_sim_dir, clip_sim_image``,
as the official writer's rows). The thresholds and the per-prompt cap are
``ip2p.data.filtering.ClipFilter``'s (the same code the dataset readers apply); the kept pairs
become ``seeds.json`` (sorted, seeds as strings) so that ``official:<folder>`` reads exactly them.

Also written: ``filter_report.json`` (thresholds, CLIP spec, counts) and ``filter_table.md``: per
threshold, how many pairs fail it alone and how many it removes when the thresholds are applied in
order (image, direction, sim_0, sim_1, then the per-prompt cap). A similarity that could not be
computed (non-finite) is stored as null, counted, and its pair is not kept.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ip2p.data.filtering import METADATA_KEYS as THRESHOLD_KEYS, ClipFilter, apply_clip_filter
from ip2p.data.pairs import metadata_line, read_folder, write_seeds_json
from ip2p.data.rows import BadRowLog
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError
from ip2p.util.io import atomic_write_json, atomic_write_text, load_image

_SIM_TO_KEY = {"sim_0": "clip_sim_0", "sim_1": "clip_sim_1", "sim_direction": "clip_sim_dir", "sim_image": "clip_sim_image"}
_ORDER = ("min_image", "min_direction", "min_sim_0", "min_sim_1")


def prompt_folders(root: Path) -> list[Path]:
    """Prompt folders of a pairs folder: sub-folders holding a ``prompt.json``, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "prompt.json").is_file())


def _prompt_texts(folder: Path) -> tuple[str, str]:
    try:
        prompt = json.loads((folder / "prompt.json").read_text())
    except json.JSONDecodeError as e:
        raise DataRowError(f"{folder / 'prompt.json'}: not valid JSON: {e}") from e
    cap_in = prompt.get("input", prompt.get("caption"))
    if not isinstance(cap_in, str) or not isinstance(prompt.get("output"), str):
        raise DataRowError(f"{folder / 'prompt.json'}: field 'input' (or 'caption') and 'output' must be strings")
    return cap_in, prompt["output"]


def filter_decisions(rows: list[dict], flt: ClipFilter) -> dict[str, Any]:
    """Counts of a filter on metadata ``rows`` (dicts with ``prompt``, ``seed`` and the similarities):
    ``fails_alone`` and ``removed_in_order`` per threshold, ``not_computed``, ``removed_by_cap``,
    and ``kept`` (the list of (prompt, seed) ``apply_clip_filter`` keeps)."""
    fails_alone: dict[str, int] = {}
    removed_in_order: dict[str, int] = {}
    computed = [r for r in rows if all(r.get(k) is not None and math.isfinite(r[k]) for k in THRESHOLD_KEYS.values())]
    alive = list(computed)
    for attr in _ORDER:
        threshold, key = getattr(flt, attr), THRESHOLD_KEYS[attr]
        if threshold is None:
            continue
        fails_alone[attr] = sum(1 for r in computed if r[key] < threshold)
        before = len(alive)
        alive = [r for r in alive if r[key] >= threshold]
        removed_in_order[attr] = before - len(alive)
    examples = [EditExample(item_id=f"{r['prompt']}/{r['seed']}", instruction="", input_image=torch.zeros(0),
                            metadata={"prompt_id": r["prompt"], **{k: r[k] for k in THRESHOLD_KEYS.values()}})
                for r in computed]
    kept = apply_clip_filter(examples, flt, BadRowLog("raise"))
    kept_ids = [(ex.metadata["prompt_id"], int(ex.item_id.rsplit("/", 1)[1])) for ex in kept]
    return {"fails_alone": fails_alone, "removed_in_order": removed_in_order,
            "removed_by_cap": len(alive) - len(kept_ids), "not_computed": len(rows) - len(computed),
            "kept": kept_ids}


def format_table(pairs: int, decisions: dict, flt: ClipFilter) -> str:
    names = {"min_image": "image-image cos(I0, I1)", "min_direction": "directional cos(I1-I0, T1-T0)",
             "min_sim_0": "input image-caption cos(I0, T0)", "min_sim_1": "output image-caption cos(I1, T1)"}
    lines = ["| step | threshold | fail alone | removed (in order) |", "|---|---|---|---|",
             f"| similarity not computed | - | {decisions['not_computed']} | {decisions['not_computed']} |"]
    for attr in _ORDER:
        if attr in decisions["removed_in_order"]:
            lines.append(f"| {names[attr]} | >= {getattr(flt, attr)} | {decisions['fails_alone'][attr]} | "
                         f"{decisions['removed_in_order'][attr]} |")
    cap = flt.max_per_prompt
    lines.append(f"| at most k per prompt (best directional) | k = {cap if cap is not None else 'none'} | - | "
                 f"{decisions['removed_by_cap']} |")
    lines.append(f"| **kept** | | | **{len(decisions['kept'])} of {pairs}** |")
    return "\n".join(lines)


def compute_similarities(root: Path, clip, *, batch_size: int = 64, progress: bool = True) -> list[dict]:
    """The four similarities of every complete pair under ``root``, written into each folder's
    ``metadata.jsonl`` (atomic rewrite); returns rows ``{prompt, seed, clip_sim_*...}``."""
    from tqdm import tqdm

    folders = prompt_folders(root)
    if not folders:
        raise DataRowError(f"{root}: no prompt folders (sub-folders with prompt.json); is it a folder written by "
                           f"`ip2p data pairs`?")
    work = []  # (folder, caption_in, caption_out, seed)
    states = {}
    for folder in folders:
        st = read_folder(folder)
        states[folder] = st
        cap_in, cap_out = _prompt_texts(folder)
        work += [(folder, cap_in, cap_out, seed) for seed in st.rows]
    out_rows: list[dict] = []
    bar = tqdm(total=len(work), desc="clip filter", unit="pair", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(work), batch_size):
        chunk = work[start : start + batch_size]
        i0 = torch.stack([load_image(f / f"{s}_0.jpg", what=f"image 0 of {f.name}/{s}") for f, _, _, s in chunk])
        i1 = torch.stack([load_image(f / f"{s}_1.jpg", what=f"image 1 of {f.name}/{s}") for f, _, _, s in chunk])
        sims = clip(i0, i1, [c for _, c, _, _ in chunk], [c for _, _, c, _ in chunk])
        for j, (folder, _, _, seed) in enumerate(chunk):
            row = states[folder].rows[seed]
            for name, key in _SIM_TO_KEY.items():
                v = float(sims[name][j])
                row[key] = v if math.isfinite(v) else None
            out_rows.append({"prompt": folder.name, "seed": seed, **{k: row[k] for k in _SIM_TO_KEY.values()}})
        bar.update(len(chunk))
    bar.close()
    for folder, st in states.items():
        if st.rows:
            atomic_write_text(folder / "metadata.jsonl", "".join(metadata_line(r) for r in st.rows.values()))
    return out_rows


def filter_pairs(root: str | Path, clip, flt: ClipFilter | None = None, *, seeds_out: str | Path | None = None,
                 batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Compute, filter, write ``seeds.json`` (or ``seeds_out``), the report and the table."""
    t0 = time.time()
    root = Path(root)
    flt = flt or ClipFilter()
    rows = compute_similarities(root, clip, batch_size=batch_size, progress=progress)
    decisions = filter_decisions(rows, flt)
    kept: dict[str, list[int]] = {}
    for prompt, seed in decisions["kept"]:
        kept.setdefault(prompt, []).append(seed)
    seeds_path = Path(seeds_out) if seeds_out else root / "seeds.json"
    write_seeds_json(seeds_path.parent, kept, name=seeds_path.name)
    table = format_table(len(rows), decisions, flt)
    report = {"pairs": len(rows), "kept": len(decisions["kept"]), "prompts_with_kept_pairs": len(kept),
              "thresholds": flt.to_dict(), "fails_alone": decisions["fails_alone"],
              "removed_in_order": decisions["removed_in_order"], "removed_by_cap": decisions["removed_by_cap"],
              "not_computed": decisions["not_computed"], "clip": clip.spec() if hasattr(clip, "spec") else str(clip),
              "seeds_json": str(seeds_path), "seconds": round(time.time() - t0, 2)}
    atomic_write_json(root / "filter_report.json", report)
    atomic_write_text(root / "filter_table.md", table + "\n")
    report["table"] = table
    return report
