"""The regression gate: run a suite on a model and judge it against a golden file, item by item.

A golden file holds one model's per-item metric values on a suite, with everything that defines
the measurement (items and their content hashes, seeds, knob settings, the metric spec) and
the spec, versions and weights hash that made it. ``ip2p regress`` then:

    refuse  when this run's measurement differs from the golden's (exit 2, the difference named;
            nothing is compared). A different model is not a different measurement: judging
            another checkpoint is the point, so both weights hashes are recorded, never refused.
            Library versions (the metric spec's ``library`` fields, torch, diffusers) are not the
            measurement either: differences are noted beside the verdicts.
    run     the suite through the sweep (resumable and sharded like any sweep)
    pair    each unit (method, knobs, item, seed) with the golden's
    judge   per setting and gated metric, the worsening of each item
                w_i = new_i - golden_i  (lower is better)   or   golden_i - new_i  (higher is better)
            averaged over seeds, and the percentile-bootstrap interval of its mean over items
            (``bench.aggregate.bootstrap_ci``). REGRESSED when the whole interval lies above the
            metric's tolerance, or when a value the golden has is now missing; improved when it
            lies below minus the tolerance. Direction and default tolerance are declared with the
            metric (``ip2p.metrics.groups.COLUMNS``); a suite's ``gate`` section may override them.
    report  a table, a JSON report and JUnit XML; exit 0 when the gate holds, 1 on a regression.

The same model run again gives the golden's rows: bit for bit with any process count (batches are
cut from the spec alone), up to float rounding with another batch size (batched matrix products
round differently; an 8-bit pixel steps now and then), far below every tolerance.
"""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ip2p.errors import GoldenMismatchError, Ip2pError, SpecError

from bench.aggregate import bootstrap_ci, knob_label, metric_columns
from bench.spec import ExperimentSpec, GateSpec
from bench.units import canonical_knobs, expand_units

GOLDEN_FORMAT = "ip2p-bench golden 1"
REPORT_FORMAT = "ip2p-bench regress report 1"
EXIT_PASS, EXIT_REGRESSION, EXIT_COULD_NOT_RUN = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): the gate did not judge


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


# ---- the judgement --------------------------------------------------------------------------

@dataclass
class Verdict:
    """One (method, setting, metric) comparison; ``worse_*`` are in the metric's units, > 0 = worse."""

    method: str
    knobs: str
    setting: str
    metric: str
    better: str
    tolerance: float
    n_items: int
    golden_mean: float
    new_mean: float
    worse_mean: float
    worse_lo: float
    worse_hi: float
    newly_missing: int
    status: str  # "ok" | "improved" | "regressed"
    why: str = ""


def gated_metrics(gate: GateSpec, columns: Sequence[str]) -> list[str]:
    """The columns judged: the suite's list, or every column present that declares a direction."""
    from ip2p.metrics.suite import COLUMNS

    if gate.metrics:
        return list(gate.metrics)
    return [c for c in columns if c in COLUMNS and COLUMNS[c].better]


def _tolerance(gate: GateSpec, metric: str) -> float:
    from ip2p.metrics.suite import COLUMNS

    return float(gate.tolerance.get(metric, COLUMNS[metric].tolerance))


def _rng(*parts) -> np.random.Generator:
    import hashlib

    h = hashlib.sha256(json.dumps(["regress", *parts], default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _golden_value(unit: dict, metric: str, now: float, where: str) -> float:
    """A golden unit's value of a gated metric: a finite number, or null where this run has no value
    either (a metric that cannot be computed for the item). Anything else is a damaged golden:
    SpecError naming the unit and the column (the gate cannot judge against it)."""
    values = unit.get("values")
    if not isinstance(values, dict) or metric not in values:
        raise SpecError(f"{where}: the golden has no value of column {metric!r}; the golden file was edited or damaged "
                        "(remake it with --update-golden)")
    v = values[metric]
    if v is None:
        if math.isfinite(now):
            raise SpecError(f"{where}: column {metric!r} is null in the golden but this run has a value ({now:.6g}); "
                            "a golden value was removed (remake the golden with --update-golden)")
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: column {metric!r} is {json.dumps(v)} in the golden, not a finite number; the golden "
                        "file was edited or damaged (remake it with --update-golden)")
    return float(v)


def _golden_frame(golden: dict, df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The golden's units with their values of ``metrics``, each checked against this run's row."""
    key = ["method", "knobs", "item_id", "seed"]
    units = golden.get("units")
    if not isinstance(units, list) or not units:
        raise SpecError("the golden holds no units (its 'units' list is empty), so nothing would be compared; "
                        "remake it with --update-golden")
    now = {tuple(r[:4]): r[4:] for r in df[key + list(metrics)].itertuples(index=False, name=None)}
    rows = []
    for i, u in enumerate(units):
        if not isinstance(u, dict) or any(k not in u for k in key):
            raise SpecError(f"golden units[{i}]: not a unit with fields {key}; the golden file was edited or damaged")
        here = now.get((u["method"], u["knobs"], u["item_id"], u["seed"]))
        where = f"golden units[{i}] (method {u['method']!r}, item {u['item_id']!r}, seed {u['seed']})"
        rows.append({**{k: u[k] for k in key},
                     **{m: _golden_value(u, m, float("nan") if here is None else float(here[j]), where)
                        for j, m in enumerate(metrics)}})
    return pd.DataFrame(rows, columns=key + list(metrics))


def _gated_columns(golden: dict, df: pd.DataFrame, gate: GateSpec) -> list[str]:
    """The columns to judge: computed by this run (its metric spec) or named by the gate, each of them
    in the golden's column list; SpecError otherwise."""
    metrics = gated_metrics(gate, metric_columns(df))
    missing_cols = [m for m in metrics if m not in df.columns]
    if missing_cols:
        raise SpecError(f"gate.metrics: {missing_cols} are not computed by this suite (its columns: "
                        f"{metric_columns(df)}); add their group to metrics.compute or drop them from the gate")
    if not metrics:
        raise SpecError("the suite computes no gated metric column, so the gate would compare nothing")
    columns = golden.get("columns")
    not_in_golden = [m for m in metrics if not isinstance(columns, list) or m not in columns]
    if not_in_golden:
        raise SpecError(f"the golden's column list lacks {not_in_golden}, which this suite's metric spec computes and "
                        "gates; the golden file was edited or damaged (remake it with --update-golden)")
    return metrics


def judge(golden: dict, df: pd.DataFrame, gate: GateSpec) -> list[Verdict]:
    """Pair the run's rows with the golden's units and judge every (method, setting, gated metric).

    The gated columns are those this run computes under the suite's metric spec (or the gate's
    list), never the golden's column list: a column removed from the golden fails (SpecError),
    as do golden values that are NaN, ±Infinity, non-numbers, missing, or null where this run has a
    value, and any comparison that would pair no item. Nothing compared never reads as a pass."""
    from ip2p.metrics.suite import COLUMNS

    metrics = _gated_columns(golden, df, gate)
    gold = _golden_frame(golden, df, metrics)
    key = ["method", "knobs", "item_id", "seed"]
    merged = gold.merge(df[key + metrics], on=key, how="left", suffixes=("_golden", "_new"), indicator=True)
    absent = merged[merged["_merge"] != "both"]
    if len(absent):
        r = absent.iloc[0]
        raise SpecError(f"the run has no row for {len(absent)} golden unit(s), e.g. method {r['method']!r}, knobs "
                        f"{r['knobs']}, item {r['item_id']!r}, seed {r['seed']}; the sweep is incomplete")
    vary = {}
    for method, g in merged.groupby("method", sort=False):
        ks = [json.loads(k) for k in g["knobs"].unique()]
        vary[method] = [n for n in sorted({n for k in ks for n in k})
                        if len({json.dumps(k.get(n)) for k in ks}) > 1] or None
    out = []
    for (method, knobs), g in merged.groupby(["method", "knobs"], sort=False):
        for m in metrics:
            info = COLUMNS[m]
            sign = 1.0 if info.better == "lower" else -1.0
            gv = g[f"{m}_golden"].to_numpy(dtype=np.float64)
            nv = g[f"{m}_new"].to_numpy(dtype=np.float64)
            both = np.isfinite(gv) & np.isfinite(nv)
            newly_missing = int((np.isfinite(gv) & ~np.isfinite(nv)).sum())
            worse = pd.Series(np.where(both, sign * (nv - gv), np.nan), index=g.index)
            per_item = worse.groupby(g["item_id"]).mean().sort_index()  # mean over seeds; items resampled
            mean, lo, hi = bootstrap_ci(per_item.to_numpy(), n_boot=gate.n_boot, level=gate.level,
                                        rng=_rng(method, knobs, m))
            tol = _tolerance(gate, m)
            status, why = "ok", ""
            if newly_missing:
                status, why = "regressed", f"{newly_missing} value(s) the golden has are missing now"
            elif np.isfinite(lo) and lo > tol:
                status, why = "regressed", f"worse by {mean:.4g} [{lo:.4g}, {hi:.4g}] > tolerance {tol:g}"
            elif np.isfinite(hi) and hi < -tol:
                status, why = "improved", f"better by {-mean:.4g} [{-hi:.4g}, {-lo:.4g}] > tolerance {tol:g}"
            out.append(Verdict(method, knobs, knob_label(knobs, vary[method]), m, info.better, tol,
                               int(np.isfinite(per_item.to_numpy()).sum()), float(np.nanmean(gv)) if np.isfinite(gv).any()
                               else float("nan"), float(np.nanmean(nv)) if np.isfinite(nv).any() else float("nan"),
                               mean, lo, hi, newly_missing, status, why))
    empty = [v for v in out if v.n_items == 0 and not v.newly_missing]
    if empty:
        names = ", ".join(f"{v.metric} [{v.method} {v.setting}]" for v in empty[:4])
        raise SpecError(f"{len(empty)} comparison(s) paired no item with a value on both sides ({names}); the gate "
                        "cannot judge what it did not compare (drop those columns with gate.metrics, or remake the "
                        "golden)")
    return out


# ---- the report -----------------------------------------------------------------------------

@dataclass
class GateReport:
    """What one ``ip2p regress`` run concluded. ``exit_code``: 0 holds, 1 regression, 2 could not run."""

    status: str  # "pass" | "regression" | "refused" | "error" | "interrupted" | "golden-written" | "rank-done"
    exit_code: int
    suite: str
    golden: str
    run_dir: str | None = None
    message: str = ""
    level: float = 0.95
    verdicts: list[Verdict] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)  # {"golden": {label: identity}, "now": {...}}
    notes: list[str] = field(default_factory=list)  # implementation versions that differ from the golden's
    seconds: float = 0.0

    @property
    def regressions(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "regressed"]

    def headline(self) -> str:
        if self.status == "pass":
            return (f"gate holds: {len(self.verdicts)} comparisons against {self.golden}, none worse beyond its "
                    f"tolerance ({self._hashes()})")
        if self.status == "regression":
            worst = ", ".join(f"{v.metric} [{v.setting}]" for v in self.regressions[:4])
            more = len(self.regressions) - 4
            return (f"REGRESSION: {len(self.regressions)} of {len(self.verdicts)} comparisons worse than {self.golden}"
                    f" beyond tolerance: {worst}{f' and {more} more' if more > 0 else ''} ({self._hashes()})")
        return self.message

    def _hashes(self) -> str:
        g = {k: v.get("weights_hash") for k, v in self.models.get("golden", {}).items()}
        n = {k: v.get("weights_hash") for k, v in self.models.get("now", {}).items()}
        parts = []
        for label in n:
            same = " (same weights)" if g.get(label) == n[label] else ""
            parts.append(f"{label}: weights {n[label]} vs golden {g.get(label)}{same}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        from ip2p.util.provenance import now_iso

        d = {k: v for k, v in asdict(self).items() if k != "verdicts"}
        d.update({"format": REPORT_FORMAT, "written": now_iso(), "headline": self.headline(),
                  "verdicts": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in asdict(x).items()} for x in self.verdicts]})
        return d

    def render(self, console) -> None:
        """The verdict table (regressions first) and the headline, on a rich console."""
        from rich.table import Table

        if self.verdicts:
            pct = f"{self.level * 100:g}%"
            several = len({v.method for v in self.verdicts}) > 1
            t = Table(title=f"{self.suite} vs golden: worsening per item (> 0 = worse), mean [{pct} bootstrap interval]")
            names = (["method"] if several else []) + ["setting", "metric", "golden", "now", "worse", "tol", "n",
                                                        "status"]
            for name in names:
                t.add_column(name, justify="left" if name in ("method", "setting", "metric", "status") else "right")
            order = {"regressed": 0, "improved": 1, "ok": 2}
            for v in sorted(self.verdicts, key=lambda v: order[v.status]):
                style = {"regressed": "bold red", "improved": "green"}.get(v.status)
                arrow = {"higher": "(higher better)", "lower": "(lower better)"}.get(v.better, "")
                cells = ([v.method] if several else []) + [
                    v.setting, f"{v.metric} {arrow}", f"{v.golden_mean:.4f}", f"{v.new_mean:.4f}",
                    f"{v.worse_mean:+.4f} [{v.worse_lo:+.4f}, {v.worse_hi:+.4f}]", f"{v.tolerance:g}",
                    str(v.n_items), v.status.upper() if v.status == "regressed" else v.status]
                t.add_row(*cells, style=style)
            console.print(t)
        if self.notes:
            console.print("versions differ from the golden's (informational): " + "; ".join(self.notes), soft_wrap=True)
        console.print(self.headline(), style="bold red" if self.exit_code else None, soft_wrap=True)

    def table_text(self, width: int = 140) -> str:
        """The table and headline as plain text (for failure messages and logs)."""
        from rich.console import Console

        buf = io.StringIO()
        self.render(Console(file=buf, width=width, color_system=None, force_terminal=False))
        return buf.getvalue()

    def junit_xml(self) -> str:
        """JUnit XML: one testcase per comparison (a failure per regression), or one error
        testcase when the gate could not run."""
        import socket

        from ip2p.util.provenance import now_iso

        cases = []
        for v in self.verdicts:
            case = ET.Element("testcase", classname=f"ip2p_regress.{self.suite}.{v.method}",
                              name=f"{v.metric} [{v.setting}]", time="0")
            if v.status == "regressed":
                fail = ET.SubElement(case, "failure", message=v.why, type="regression")
                fail.text = (f"{v.metric} ({v.better} is better) at {v.setting}: golden {v.golden_mean:.6g}, now "
                             f"{v.new_mean:.6g}; {v.why} over {v.n_items} paired items")
            cases.append(case)
        if self.exit_code in (EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED):
            case = ET.Element("testcase", classname=f"ip2p_regress.{self.suite}", name="measurement", time="0")
            ET.SubElement(case, "error", message=self.message, type=self.status).text = self.message
            cases.append(case)
        failures = sum(1 for v in self.verdicts if v.status == "regressed")
        errors = int(self.exit_code in (EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED))
        root = ET.Element("testsuites", name="ip2p regress", tests=str(len(cases)), failures=str(failures),
                          errors=str(errors), time=f"{self.seconds:.3f}")
        suite = ET.SubElement(root, "testsuite", name=f"ip2p_regress.{self.suite}", tests=str(len(cases)),
                              failures=str(failures), errors=str(errors), skipped="0", time=f"{self.seconds:.3f}",
                              timestamp=now_iso(), hostname=socket.gethostname())
        props = ET.SubElement(suite, "properties")
        prop = {"golden": self.golden, "status": self.status, "run_dir": self.run_dir or ""}
        if self.notes:
            prop["versions_differ"] = "; ".join(self.notes)
        for side in ("golden", "now"):
            for label, ident in self.models.get(side, {}).items():
                prop[f"{side}.{label}.weights_hash"] = str(ident.get("weights_hash"))
                prop[f"{side}.{label}.source"] = str(ident.get("source"))
        for k, v in prop.items():
            ET.SubElement(props, "property", name=k, value=v)
        suite.extend(cases)
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

    def write(self, json_path: str | Path | None, junit_path: str | Path | None) -> None:
        from ip2p.util.io import atomic_write_json, atomic_write_text

        if json_path:
            atomic_write_json(json_path, self.to_dict())
        if junit_path:
            atomic_write_text(junit_path, self.junit_xml())


# ---- the command ----------------------------------------------------------------------------

def with_models(spec: ExperimentSpec, models: Sequence[str]) -> ExperimentSpec:
    """``spec`` with its methods' models replaced: ``SOURCE`` (a one-method suite) or ``LABEL=SOURCE``."""
    if not models:
        return spec
    spec = spec.model_copy(deep=True)
    labels = {m.key: m for m in spec.methods}
    for given in models:
        label, sep, source = given.partition("=")
        if sep and label in labels:
            labels[label].model = source
        elif len(spec.methods) == 1:
            spec.methods[0].model = given
        else:
            raise SpecError(f"--model {given!r}: the suite has methods {sorted(labels)}; say which as LABEL=SOURCE")
    return spec


def code_state() -> str:
    """A short name of the code that runs: the git commit, plus a hash of the uncommitted changes
    when the checkout has any (the package version outside a git checkout)."""
    import subprocess

    from ip2p.util.hashing import hash_bytes

    from ip2p.util.provenance import git_state, package_versions

    git = git_state()
    if not git.get("commit"):
        return "v" + re.sub(r"[^A-Za-z0-9_.-]+", "-", str(package_versions().get("ip2p-bench")))
    state = str(git["commit"])[:10]
    if git.get("dirty"):
        try:
            diff = subprocess.run(["git", "diff", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            diff = str(time.time()).encode()  # unknown changes: never reuse
        state += "-dirty" + hash_bytes(diff, length=8)
    return state


def default_run_dir(spec: ExperimentSpec, models: dict) -> Path:
    """``results/runs/regress/<suite>-<weights hashes>-<code state>-b<batch size>``: a rerun of the same weights
    under the same code resumes there; new weights or changed code start a new folder (stored rows
    of other code must not stand in for a run of this code)."""
    weights = "-".join(str(models[k].get("weights_hash"))[:12] for k in sorted(models))
    from ip2p.util.paths import safe_name, safe_output_path

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name)
    name = f"{slug}-{weights}-{code_state()}-b{spec.batch_size}"  # batch size: see bench.run_folder._check_batch_size
    return safe_output_path(Path("results/runs/regress"), safe_name(name, max_bytes=180), what="run folder name")


def run_regress(spec: ExperimentSpec, golden_path: str | Path, *, out: str | Path | None = None,
                update_golden: bool = False, fresh: bool = False, device: str | None = None,
                base_dir: Path | None = None, progress: bool = True, json_path: str | Path | None = "auto",
                junit_path: str | Path | None = "auto", rank: int | None = None,
                world_size: int | None = None) -> GateReport:
    """Gate ``spec``'s models against the golden file (or write it with ``update_golden``).

    Returns the report (and writes it as JSON and JUnit XML; ``"auto"`` = ``<run>/regress.json``
    and ``<run>/regress.junit.xml``). Anything that stops the gate from judging (a refused golden,
    a bad spec, a model that cannot load) gives ``exit_code`` 2 and the reason in ``message``."""
    from bench.data import load_items
    from bench.store import load_results
    from bench.distributed import dist_env, pick_device
    from bench.editors import build_editor
    from bench.sweep import run_sweep

    t0 = time.time()
    golden_path = str(golden_path)
    env_rank, env_world, local_rank = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    report = GateReport("error", EXIT_COULD_NOT_RUN, spec.name, golden_path, level=spec.gate.level)
    run_dir: Path | None = Path(out) if out is not None else None
    try:
        dev = pick_device(device or spec.device, local_rank)
        now_models = {m.key: build_editor(m, i, dev)[1] for i, m in enumerate(spec.methods)}
        report.models["now"] = now_models
        run_dir = run_dir or default_run_dir(spec, now_models)
        report.run_dir = str(run_dir)
        items = load_items(spec.dataset, base_dir)
        meas = measurement(spec, items, metric_spec_of(spec))
        golden = None
        if not update_golden:
            golden = read_golden(golden_path)
            report.models["golden"] = golden["models"]
            from ip2p.util.provenance import package_versions

            report.notes = implementation_differences(golden, {"metric_spec": meas["metric_spec"],
                                                               "versions": package_versions()})
            diffs = measurement_differences(golden["measurement"], meas)
            if diffs:
                raise GoldenMismatchError(f"golden {golden_path} was made under another measurement, so it is not "
                                          f"compared: {'; '.join(diffs)}. Gate against a golden of this suite, or "
                                          "make a new one with --update-golden")
        if fresh and run_dir.exists():
            if world_size > 1:
                raise SpecError("--fresh: delete the run folder before launching several processes")
            shutil.rmtree(run_dir)
        run_sweep(spec, run_dir, base_dir=base_dir, progress=progress, device=dev, rank=rank, world_size=world_size)
        if rank != 0:  # rank 0 judges once every rank's shards are in (run_sweep ends on a barrier)
            report.status, report.exit_code = "rank-done", EXIT_PASS
            report.message = f"rank {rank}/{world_size}: my share of the suite is stored in {run_dir}"
            return report
        df = _rows_of(load_results(run_dir), spec, items)
        stored_spec = json.loads(df["metric_spec"].iloc[0])
        if _dict_differences(meas["metric_spec"], stored_spec):  # rows of this very run folder: all fields
            raise SpecError(f"{run_dir}: rows were scored under another metric spec than this suite's "
                            f"({_dict_differences(meas['metric_spec'], stored_spec)[0]}); rerun with --fresh")
        if update_golden:
            from ip2p.util.io import atomic_write_json

            atomic_write_json(golden_path, build_golden(spec, meas, df, now_models)).chmod(0o644)  # to be shared
            report.status, report.exit_code = "golden-written", EXIT_PASS
            weights = ", ".join(f"{k}: weights {v.get('weights_hash')}" for k, v in now_models.items())
            report.message = f"wrote golden {golden_path}: {len(df)} units of suite {spec.name!r} ({weights})"
        else:
            report.verdicts = judge(golden, df, spec.gate)
            failed = bool(report.regressions)
            report.status = "regression" if failed else "pass"
            report.exit_code = EXIT_REGRESSION if failed else EXIT_PASS
    except GoldenMismatchError as e:
        report.status, report.message = "refused", str(e)
    except Ip2pError as e:
        report.status, report.message = "error", str(e)
    except KeyboardInterrupt:  # Ctrl-C: a report that says so (a failure for CI), then the interrupt goes on
        report.status, report.exit_code = "interrupted", EXIT_INTERRUPTED
        report.message = "interrupted (SIGINT) before the gate judged: nothing was compared"
        report.seconds = time.time() - t0
        if run_dir is not None:
            _write_quietly(report, run_dir, json_path, junit_path)
        raise
    report.seconds = time.time() - t0
    if run_dir is not None and report.status != "rank-done":
        report.write(run_dir / "regress.json" if json_path == "auto" else json_path,
                     run_dir / "regress.junit.xml" if junit_path == "auto" else junit_path)
    return report


def _write_quietly(report: GateReport, run_dir: Path, json_path, junit_path) -> None:
    """Write the report of an interrupted gate; a failure to write must not hide the interrupt."""
    try:
        report.write(run_dir / "regress.json" if json_path == "auto" else json_path,
                     run_dir / "regress.junit.xml" if junit_path == "auto" else junit_path)
    except (OSError, KeyboardInterrupt):
        pass


def _rows_of(df: pd.DataFrame, spec: ExperimentSpec, items: Sequence) -> pd.DataFrame:
    """The run folder's rows of exactly this suite's units (a folder may hold more); SpecError
    when some are missing."""
    units = expand_units([(m.key, m.settings()) for m in spec.methods], [ex.item_id for ex in items], spec.seeds,
                         spec.item_limits())
    keys = {u.key for u in units}
    if df.empty:
        raise SpecError("the sweep stored no rows")
    df = df[df["unit_key"].isin(keys)].reset_index(drop=True)
    if len(df) != len(keys):
        raise SpecError(f"the sweep stored {len(df)} of the suite's {len(keys)} units; rerun to complete it")
    return df
