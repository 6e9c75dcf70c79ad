"""Golden files of the regression gate: their format (``GOLDEN_FORMAT``), what they measure, and
reading, checking and writing them.

A golden file holds one model's per-item metric values on a suite, with everything that defines
the measurement (items and their content hashes, seeds, knob settings, the metric spec:
``measurement``) and the spec, versions and weights hash that made it (``build_golden``).
``read_golden`` refuses a file of another format or a damaged one (``SpecError`` naming the file and
the field). ``measurement_differences`` says, one sentence each, why a golden of another
measurement is not compared; ``implementation_differences`` lists library versions that differ,
which are noted, never refused.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ip2p.errors import SpecError

from bench.aggregate import metric_columns
from bench.spec import ExperimentSpec
from bench.units import canonical_knobs

GOLDEN_FORMAT = "ip2p-bench golden 1"


# ---- the measurement: what a golden file and a run must share ----------------------------------

def _image_hash(x) -> str | None:
    """Hash of an image's 8-bit pixels (independent of the PNG encoder), None for no image."""
    if x is None:
        return None
    import torch

    from ip2p.util.hashing import hash_tensor

    return hash_tensor((x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8))


def item_fingerprint(ex) -> str:
    """Hash of what an item contributes to a measurement: its texts, category, input, target and mask."""
    from ip2p.util.hashing import hash_bytes, hash_tensor

    mask = ex.load_mask()
    parts = [ex.instruction, ex.input_caption, ex.output_caption, ex.category, _image_hash(ex.load_input()),
             _image_hash(ex.load_target()), None if mask is None else hash_tensor(mask.bool())]
    return hash_bytes(json.dumps(parts).encode())


def metric_spec_of(spec: ExperimentSpec) -> dict:
    """The metric spec a sweep of ``spec`` records in its rows (backbones, weights hashes,
    preprocessing, column definitions), computed before running anything."""
    from bench.scoring import Scorer

    return json.loads(json.dumps(Scorer(spec.metrics, device="cpu").spec(), sort_keys=True, default=str))


def measurement(spec: ExperimentSpec, items: Sequence, metric_spec: dict) -> dict:
    """Everything a result value depends on besides the model: items (with content hashes),
    seeds, each method's knob settings, and the metric spec."""
    return {
        "items": {ex.item_id: item_fingerprint(ex) for ex in items},
        "seeds": [int(s) for s in spec.seeds],
        "methods": {m.key: [canonical_knobs(s) for s in m.settings()] for m in spec.methods},
        "metric_spec": metric_spec,
    }


def _dict_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """``path: golden X, now Y`` for every leaf where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append(f"{sub}: absent in the golden, now {json.dumps(b[k])[:80]}")
            elif k not in b:
                out.append(f"{sub}: golden {json.dumps(a[k])[:80]}, absent now")
            else:
                out += _dict_differences(a[k], b[k], sub)
        return out
    if a != b:
        return [f"{path or '(value)'}: golden {json.dumps(a)[:80]}, now {json.dumps(b)[:80]}"]
    return []


def _some(names: Sequence[str], n: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# Fields of a metric spec that name an implementation's version, not what is measured (and the
# hash over all fields): a change there is reported beside the verdicts, never refused, so that a
# routine library upgrade does not stop every gate; a change in what they compute shows as a shift.
_IMPLEMENTATION_FIELDS = ("library", "spec_hash")


def _is_implementation_field(difference: str) -> bool:
    return difference.split(":", 1)[0].rsplit(".", 1)[-1] in _IMPLEMENTATION_FIELDS


def implementation_differences(golden: dict, now: dict) -> list[str]:
    """Library versions of the metrics and of the main packages that differ (informational)."""
    out = [d for d in _dict_differences(golden.get("measurement", {}).get("metric_spec"), now["metric_spec"])
           if _is_implementation_field(d) and not d.startswith("spec_hash")]
    old, new = golden.get("versions", {}), now.get("versions", {})
    out += [f"{k}: golden {old.get(k)}, now {new.get(k)}" for k in ("torch", "diffusers", "transformers",
                                                                      "open_clip_torch") if old.get(k) != new.get(k)]
    return out


def measurement_differences(golden: dict, now: dict) -> list[str]:
    """What differs between a golden file's measurement and this run's, one sentence each."""
    out: list[str] = []
    diff = [d for d in _dict_differences(golden.get("metric_spec"), now["metric_spec"])
            if not _is_implementation_field(d)]
    if diff:
        out.append("metric spec differs: " + "; ".join(diff[:4]) + (f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""))
    g_items, n_items = golden.get("items", {}), now["items"]
    only_g = [i for i in g_items if i not in n_items]
    only_n = [i for i in n_items if i not in g_items]
    changed = [i for i in g_items if i in n_items and g_items[i] != n_items[i]]
    if only_g or only_n:
        out.append(f"item set differs: {len(g_items)} items in the golden, {len(n_items)} now"
                   + (f"; only in the golden: {_some(only_g)}" if only_g else "")
                   + (f"; only now: {_some(only_n)}" if only_n else ""))
    if changed:
        out.append(f"item content differs (instruction, captions, category or images) for {_some(changed)}")
    if golden.get("seeds") != now["seeds"]:
        out.append(f"seed set differs: golden {golden.get('seeds')}, now {now['seeds']}")
    g_m, n_m = golden.get("methods", {}), now["methods"]
    if sorted(g_m) != sorted(n_m):
        out.append(f"methods differ: golden {sorted(g_m)}, now {sorted(n_m)} (methods are matched by label)")
    for label in sorted(set(g_m) & set(n_m)):
        if sorted(g_m[label]) != sorted(n_m[label]):
            gone = [k for k in g_m[label] if k not in n_m[label]]
            new = [k for k in n_m[label] if k not in g_m[label]]
            out.append(f"knob settings of method {label!r} differ: only in the golden {gone or 'none'}; "
                       f"only now {new or 'none'}")
    return out


# ---- golden files ---------------------------------------------------------------------------

def read_golden(path: str | Path) -> dict:
    """A golden file, checked for its format; SpecError naming the file otherwise."""
    from ip2p.util.io import read_json

    path = Path(path)
    doc = read_json(path, SpecError, missing=f"golden file not found: {path} (make one with `ip2p regress "
                                              "--update-golden`)")
    if not isinstance(doc, dict) or doc.get("format") != GOLDEN_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise SpecError(f"{path}: not a golden file of `ip2p regress` (field 'format' is {got!r}, "
                        f"expected {GOLDEN_FORMAT!r})")
    for key, kind in (("measurement", dict), ("units", list), ("columns", list), ("models", dict)):
        if key not in doc:
            raise SpecError(f"{path}: golden file has no field {key!r}; remake it with `ip2p regress --update-golden`")
        if not isinstance(doc[key], kind):
            raise SpecError(f"{path}: golden field {key!r} is a {type(doc[key]).__name__}, not a {kind.__name__}; the "
                            "file was edited or damaged (remake it with `ip2p regress --update-golden`)")
    if not doc["units"]:
        raise SpecError(f"{path}: golden file holds no units, so nothing would be compared; remake it with "
                        "`ip2p regress --update-golden`")
    if not all(isinstance(doc["measurement"].get(k), dict) for k in ("items", "methods", "metric_spec")) \
            or not isinstance(doc["measurement"].get("seeds"), list):
        raise SpecError(f"{path}: golden field 'measurement' lacks items, seeds, methods or metric_spec; the file was "
                        "edited or damaged (remake it with `ip2p regress --update-golden`)")
    return doc


def _finite_or_none(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def build_golden(spec: ExperimentSpec, meas: dict, df: pd.DataFrame, models: dict) -> dict:
    """The golden document of a complete run: measurement, provenance and every unit's values."""
    from ip2p.util.provenance import git_state, hardware, now_iso, package_versions

    cols = metric_columns(df)
    units = [{"method": r["method"], "knobs": r["knobs"], "item_id": r["item_id"], "seed": int(r["seed"]),
              "values": {c: _finite_or_none(r[c]) for c in cols}} for _, r in df.iterrows()]
    return {
        "format": GOLDEN_FORMAT,
        "created": now_iso(),
        "suite": spec.name,
        "spec": spec.to_dict(),
        "spec_fingerprint": spec.fingerprint(),
        "measurement": meas,
        "models": models,
        "versions": package_versions(),
        "git": git_state(),
        "hardware": hardware(),
        "columns": cols,
        "units": units,
    }
