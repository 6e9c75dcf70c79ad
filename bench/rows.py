"""Result rows of a sweep: one per work unit, made from an edited batch.

A row holds the unit (method, knobs, item, seed), the item's texts, the content-addressed paths of
its stored images, and its metrics, computed on exactly the pixels the stored PNG holds, against the
input as the editor processed it and the target and mask at the output's size. A published
benchmark scored as its authors score it (``authors_rescore``) rescores its rows here.
"""
from __future__ import annotations

import json
import time

import torch

from ip2p.protocol import EditRequest
from ip2p.registry import get_method
from ip2p.util.io import png_bytes

from bench.benchmarks import get_benchmark
from bench.editors import identity_hash
from bench.spec import ExperimentSpec


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


def _fit_mask(m: torch.Tensor, hw: tuple[int, int], *, border: bool = False) -> torch.Tensor:
    """A mask at the output's size (nearest). ``border``: the image's outermost rows and columns are
    edited at every size, as PIE-Bench's evaluate.py marks them at 512 (a nearest resize alone would
    drop row and column 511)."""
    if tuple(m.shape[-2:]) == tuple(hw):
        return m.bool()
    out = torch.nn.functional.interpolate(m[None, None].float(), size=hw, mode="nearest")[0, 0] > 0.5
    if border:
        out[0, :] = out[-1, :] = True
        out[:, 0] = out[:, -1] = True
    return out


def scoring_of(spec: ExperimentSpec) -> str | None:
    """``authors`` (the default) or ``ours`` for a published benchmark (``dataset.options.scoring``),
    None for other data sets."""
    if not get_benchmark(spec.dataset.kind).published:
        return None
    return str(spec.dataset.options.get("scoring", "authors"))


def _metric_input(editor, image: torch.Tensor, knobs: dict, hw: tuple[int, int]) -> torch.Tensor:
    """The input as the editor processed it (``Editor.metric_input``), at the output's size: the
    reference image of the metrics."""
    x = editor.metric_input(EditRequest(image=image, instruction="", knobs=knobs))
    return x if tuple(x.shape[-2:]) == tuple(hw) else _fit_to(x, hw)


def rows_for_batch(store, spec, batch, outs, items, images, unit_image, input_paths, mi, mspec, identity, scorer, stats,
                   editor):
    """Rows of one edited batch: ``images`` holds the items' inputs, targets and masks; ``unit_image(u)``
    is a unit's input (a previous turn's output for chained benchmark turns)."""
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
        t = images.target(u.item_index)
        targets.append(None if t is None else _quantize(_fit_to(t, hw)))
        m = images.mask(u.item_index)
        masks.append(None if m is None else _fit_mask(m, hw, border=bool(ex.metadata.get("mask_border"))))
    t1 = time.time()
    metrics = scorer.score(inputs, edited, [items[u.item_index].input_caption for u in batch],
                           [items[u.item_index].output_caption for u in batch], targets, masks,
                           instructions=[items[u.item_index].instruction for u in batch],
                           categories=[items[u.item_index].category for u in batch])
    stats["metric_seconds"] += time.time() - t1
    rescore = get_benchmark(spec.dataset.kind).authors_rescore  # a benchmark scored as its authors score it
    if rescore is not None and scoring_of(spec) == "authors":
        for u, q, met in zip(batch, edited, metrics):
            rescore(q, images.target(u.item_index), met)
    common = {"metric_spec": json.dumps(scorer.spec(), sort_keys=True, default=str),
              "model_identity": json.dumps(identity, sort_keys=True, default=str), "model_hash": identity_hash(identity)}
    return [_row(store, spec, u, x, opath, met, items, images, input_paths, mi, mspec, common)
            for u, x, opath, met in zip(batch, edited, out_paths, metrics)]


def _row(store, spec, u, x, opath, met, items, images, input_paths, mi, mspec, common: dict) -> dict:
    """The row of unit ``u`` with its edited pixels ``x`` (stored at ``opath``) and metrics ``met``."""
    ex = items[u.item_index]
    target_path = None
    if spec.save_images and ex.target_image is not None:
        key = ("target", u.item_index)
        if key not in input_paths:
            input_paths[key] = store.save_png(images.target(u.item_index))
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
    row.update(common)
    return row


__all__ = ["rows_for_batch", "scoring_of"]
