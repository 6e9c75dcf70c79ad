"""The editors a sweep runs: built from the method registry (``ip2p.registry``) and kept for later
sweeps in this process, checked against the weights of stored results, and run on a batch of
requests (one call per input size), their outputs checked before any row is made of them."""
from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from typing import Any

import torch

from ip2p.errors import NonFiniteOutputError, SpecError
from ip2p.protocol import EditRequest, check_identity
from ip2p.registry import get_method

_EDITORS: "OrderedDict[str, Any]" = OrderedDict()  # loaded editors, reused by later sweeps in this process


def clear_editor_cache() -> None:
    """Forget the editors kept for later sweeps (e.g. after a method's registry entry changed)."""
    _EDITORS.clear()


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


def cached_editor(editors: dict, label: str, mspec, index: int, device: str, metric_clip: dict | None = None):
    """(editor, identity) of a method, built on first use and kept in ``editors``."""
    if label not in editors:
        editors[label] = build_editor(mspec, index, device, metric_clip)
    return editors[label]


def identity_hash(identity: dict) -> str:
    """The weights hash an editor identity names (required by ``ip2p.protocol.check_identity``)."""
    return str(identity["weights_hash"])


def check_stored_models(store, method_specs: dict, device: str, editors: dict, metric_clip: dict | None = None) -> None:
    """Refuse to extend stored results made with other weights: rows of one method must share one model.
    The editors it builds are kept in ``editors`` for the sweep itself."""
    for method, hashes in store.model_hashes().items():
        if method not in method_specs:
            continue
        index, mspec = method_specs[method]
        _, identity = cached_editor(editors, method, mspec, index, device, metric_clip)
        now, stored = identity_hash(identity), sorted(hashes)
        if stored != [now]:
            raise SpecError(f"methods[{index}] ({mspec.name}, model {identity.get('source')!r}): the results stored in "
                            f"{store.root} were made with weights {', '.join(stored)}, the model now loaded has {now}; "
                            "write to a new output folder (or delete the old one) instead of mixing them")


def run_by_size(editor, requests: list[EditRequest]) -> list[torch.Tensor]:
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


def check_outputs(outs, batch, label) -> None:
    """One finite [3, H, W] image per unit of the batch; ``NonFiniteOutputError`` naming the unit otherwise."""
    if len(outs) != len(batch):
        raise NonFiniteOutputError(f"method {label!r} returned {len(outs)} images for {len(batch)} requests")
    for u, x in zip(batch, outs):
        if x.ndim != 3 or x.shape[0] != 3:
            raise NonFiniteOutputError(f"method {label!r}, item {u.item_id!r}, knobs {u.knobs_json}: "
                                       f"expected a [3, H, W] image, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise NonFiniteOutputError(f"method {label!r}, item {u.item_id!r}, knobs {u.knobs_json}, seed {u.seed}: "
                                       "output has NaN or Inf values")


__all__ = ["build_editor", "cached_editor", "clear_editor_cache", "identity_hash", "check_stored_models",
           "run_by_size", "check_outputs"]
