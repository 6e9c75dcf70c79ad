"""The regression gate's run (``ip2p regress``): refuse a golden of another measurement, run the
suite through the sweep, then write the golden or judge against it, and report.

    refuse  when this run's measurement differs from the golden's (exit 2, the difference named;
            nothing is compared; ``bench.regress.golden``). A different model is not a different
            measurement: judging another checkpoint is the point, so both weights hashes are
            recorded, never refused. Library versions are noted beside the verdicts.
    run     the suite through the sweep (resumable and sharded like any sweep), into a run folder
            named by the suite, the weights, the code and the batch size (``default_run_dir``)
    judge   pair each unit with the golden's and judge it (``bench.regress.verdicts``)
    report  a table, a JSON report and JUnit XML (``bench.regress.report``); exit 0 when the gate
            holds, 1 on a regression, 2 when it could not judge, 130 when interrupted.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ip2p.errors import GoldenMismatchError, Ip2pError, SpecError

from bench.regress.golden import (_dict_differences, build_golden, implementation_differences, measurement,
                                  measurement_differences, metric_spec_of, read_golden)
from bench.regress.report import EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED, EXIT_PASS, EXIT_REGRESSION, GateReport
from bench.regress.verdicts import judge
from bench.spec import ExperimentSpec
from bench.units import expand_units


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


@dataclass
class _Gate:
    """One gate run: the suite, the golden's path, the report being filled in, the run folder (None
    until known), and this process's place (``rank`` of ``world_size``, its ``local_rank``)."""

    spec: ExperimentSpec
    golden_path: str
    report: GateReport
    run_dir: Path | None
    rank: int
    world_size: int
    local_rank: int


def run_regress(spec: ExperimentSpec, golden_path: str | Path, *, out: str | Path | None = None,
                update_golden: bool = False, fresh: bool = False, device: str | None = None,
                base_dir: Path | None = None, progress: bool = True, json_path: str | Path | None = "auto",
                junit_path: str | Path | None = "auto", rank: int | None = None,
                world_size: int | None = None) -> GateReport:
    """Gate ``spec``'s models against the golden file (or write it with ``update_golden``).

    Returns the report (and writes it as JSON and JUnit XML; ``"auto"`` = ``<run>/regress.json``
    and ``<run>/regress.junit.xml``). Anything that stops the gate from judging (a refused golden,
    a bad spec, a model that cannot load) gives ``exit_code`` 2 and the reason in ``message``."""
    from bench.distributed import dist_env

    t0 = time.time()
    golden_path = str(golden_path)
    env_rank, env_world, local_rank = dist_env()
    report = GateReport("error", EXIT_COULD_NOT_RUN, spec.name, golden_path, level=spec.gate.level)
    g = _Gate(spec, golden_path, report, Path(out) if out is not None else None,
              env_rank if rank is None else rank, env_world if world_size is None else world_size, local_rank)
    try:
        _run_gate(g, update_golden=update_golden, fresh=fresh, device=device, base_dir=base_dir, progress=progress)
    except GoldenMismatchError as e:
        report.status, report.message = "refused", str(e)
    except Ip2pError as e:
        report.status, report.message = "error", str(e)
    except KeyboardInterrupt:  # Ctrl-C: a report that says so (a failure for CI), then the interrupt goes on
        report.status, report.exit_code = "interrupted", EXIT_INTERRUPTED
        report.message = "interrupted (SIGINT) before the gate judged: nothing was compared"
        report.seconds = time.time() - t0
        if g.run_dir is not None:
            _write_quietly(report, g.run_dir, json_path, junit_path)
        raise
    if report.status == "rank-done":
        return report
    report.seconds = time.time() - t0
    if g.run_dir is not None:
        report.write(g.run_dir / "regress.json" if json_path == "auto" else json_path,
                     g.run_dir / "regress.junit.xml" if junit_path == "auto" else junit_path)
    return report


def _run_gate(g: _Gate, *, update_golden: bool, fresh: bool, device: str | None, base_dir: Path | None,
              progress: bool) -> None:
    """Load the models, measure, refuse a golden of another measurement, run the suite, then write the
    golden or judge against it: ``g.report`` and ``g.run_dir`` are filled in as it goes."""
    from bench.data import load_items
    from bench.distributed import pick_device
    from bench.editors import build_editor
    from bench.store import load_results
    from bench.sweep import run_sweep

    spec, report = g.spec, g.report
    dev = pick_device(device or spec.device, g.local_rank)
    now_models = {m.key: build_editor(m, i, dev)[1] for i, m in enumerate(spec.methods)}
    report.models["now"] = now_models
    g.run_dir = g.run_dir or default_run_dir(spec, now_models)
    report.run_dir = str(g.run_dir)
    items = load_items(spec.dataset, base_dir)
    meas = measurement(spec, items, metric_spec_of(spec))
    golden = None if update_golden else _comparable_golden(g, meas)
    if fresh and g.run_dir.exists():
        if g.world_size > 1:
            raise SpecError("--fresh: delete the run folder before launching several processes")
        shutil.rmtree(g.run_dir)
    run_sweep(spec, g.run_dir, base_dir=base_dir, progress=progress, device=dev, rank=g.rank, world_size=g.world_size)
    if g.rank != 0:  # rank 0 judges once every rank's shards are in (run_sweep ends on a barrier)
        report.status, report.exit_code = "rank-done", EXIT_PASS
        report.message = f"rank {g.rank}/{g.world_size}: my share of the suite is stored in {g.run_dir}"
        return
    df = _rows_of(load_results(g.run_dir), spec, items)
    stored_spec = json.loads(df["metric_spec"].iloc[0])
    if _dict_differences(meas["metric_spec"], stored_spec):  # rows of this very run folder: all fields
        raise SpecError(f"{g.run_dir}: rows were scored under another metric spec than this suite's "
                        f"({_dict_differences(meas['metric_spec'], stored_spec)[0]}); rerun with --fresh")
    if update_golden:
        _write_golden(g, meas, df, now_models)
    else:
        report.verdicts = judge(golden, df, spec.gate)
        failed = bool(report.regressions)
        report.status = "regression" if failed else "pass"
        report.exit_code = EXIT_REGRESSION if failed else EXIT_PASS


def _comparable_golden(g: _Gate, meas: dict) -> dict:
    """The golden file, its models and version notes in the report; ``GoldenMismatchError`` naming
    every difference when it was made under another measurement."""
    from ip2p.util.provenance import package_versions

    golden = read_golden(g.golden_path)
    g.report.models["golden"] = golden["models"]
    g.report.notes = implementation_differences(golden, {"metric_spec": meas["metric_spec"],
                                                         "versions": package_versions()})
    diffs = measurement_differences(golden["measurement"], meas)
    if diffs:
        raise GoldenMismatchError(f"golden {g.golden_path} was made under another measurement, so it is not "
                                  f"compared: {'; '.join(diffs)}. Gate against a golden of this suite, or "
                                  "make a new one with --update-golden")
    return golden


def _write_golden(g: _Gate, meas: dict, df: pd.DataFrame, now_models: dict) -> None:
    from ip2p.util.io import atomic_write_json

    atomic_write_json(g.golden_path, build_golden(g.spec, meas, df, now_models)).chmod(0o644)  # to be shared
    g.report.status, g.report.exit_code = "golden-written", EXIT_PASS
    weights = ", ".join(f"{k}: weights {v.get('weights_hash')}" for k, v in now_models.items())
    g.report.message = f"wrote golden {g.golden_path}: {len(df)} units of suite {g.spec.name!r} ({weights})"


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
