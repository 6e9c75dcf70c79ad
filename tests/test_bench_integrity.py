"""No silent wrong results from a run folder: one experiment per folder whatever the timing,
stored images verified and repaired, temporary files cleaned, umask permissions, unit limits,
seeds, duplicate grid values, bad masks skipped, partial runs said to be partial."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from bench.spec import parse_spec
from bench.store import RunStore, bad_stored_images, load_results, run_state
from bench.sweep import run_sweep
from bench.testing import assert_same_rows, tiny_spec
from ip2p.errors import DataRowError, SpecError

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import sys, time
from pathlib import Path
import ip2p.cli, bench.sweep, bench.spec, torch  # imported before the barrier: both start checking at once
ready, go, spec, out = sys.argv[1:5]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
sys.argv = ["ip2p", "sweep", spec, "--out", out, "--no-progress"]
ip2p.cli.main()
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _race(tmp_path: Path, specs: list[dict], run: Path) -> list[subprocess.CompletedProcess]:
    """Start one sweep per spec into ``run``, released together by a file barrier."""
    go = tmp_path / "go"
    procs, readies = [], []
    for i, spec in enumerate(specs):
        path = tmp_path / f"spec{i}.yaml"
        path.write_text(yaml.safe_dump(spec))
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, str(ready), str(go), str(path), str(run)],
                                      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.time()
    while not all(r.exists() for r in readies):
        assert time.time() - t0 < 120 and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    out = []
    for p in procs:
        o, e = p.communicate(timeout=400)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    return out


@pytest.mark.slow
def test_two_different_specs_started_at_once_one_runs_the_other_is_refused(tmp_path):
    a = tiny_spec(None, name="a")
    a["metrics"] = {"compute": ["pixel"]}
    b = tiny_spec(None, name="b")  # other metrics: another experiment
    run = tmp_path / "run"
    res = _race(tmp_path, [a, b], run)
    codes = sorted(r.returncode for r in res)
    assert codes == [0, 2], [(r.returncode, r.stderr[-1500:]) for r in res]
    loser = next(r for r in res if r.returncode == 2)
    lines = loser.stderr.strip().splitlines()
    assert len(lines) == 1 and "different experiment" in lines[0], loser.stderr
    winner = a if res[0].returncode == 0 else b
    df = load_results(run)
    assert len(df) == 12 and df["metric_spec"].nunique() == 1  # rows of one experiment only
    assert json.loads((run / "spec.json").read_text())["fingerprint"] == parse_spec(winner).fingerprint()


def test_the_same_spec_runs_while_another_sweep_of_it_holds_the_folder(tmp_path):
    """A second identical invocation (or another rank) is not refused by a running one."""
    run = tmp_path / "run"
    spec = parse_spec(tiny_spec(None, items=1))
    store = RunStore(run)
    store.root.mkdir()
    with store.mutex():
        other = store.hold_active()  # a sweep of this folder is running
    try:
        from bench.run_folder import prepare_run_folder

        prepare_run_folder(store, spec, 0).close()  # it registered its spec, as a running sweep does
        assert run_sweep(spec, run, progress=False).units_run == 4
        other_spec = tiny_spec(None, items=1)
        other_spec["metrics"] = {"compute": ["pixel"]}
        (run / "shards").rename(run / "shards-away")  # no rows: only the running sweep binds the folder
        with pytest.raises(SpecError, match="a sweep of a different experiment .* is running"):
            run_sweep(parse_spec(other_spec), run, progress=False)
    finally:
        other.close()


def test_a_sweep_that_failed_before_any_row_does_not_bind_the_folder(tmp_path):
    bad = tiny_spec(None)
    bad["methods"][0]["model"] = str(tmp_path / "no-such-model")
    run = tmp_path / "run"
    with pytest.raises(Exception):
        run_sweep(parse_spec(bad), run, progress=False)
    assert not load_results(run).size
    fixed = tiny_spec(None)  # corrected spec: another model, hence another fingerprint
    assert run_sweep(parse_spec(fixed), run, progress=False).units_run == 12
    man = json.loads((run / "manifest.json").read_text())
    assert "failed" in man["invocations"][0] and man["status"]["state"] == "complete"
    with pytest.raises(SpecError, match="different experiment"):  # now rows exist: the folder is bound
        run_sweep(parse_spec(bad), run, progress=False)


def test_corrupt_stored_images_are_named_and_repaired_with_identical_rows(tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        run_sweep(parse_spec(tiny_spec(None)), run, progress=False)
    finally:
        os.umask(old)
    # every file the sweep wrote is readable by the team (umask 022), not 0600
    modes = {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in run.rglob("*")
             if p.is_file() and not p.name.startswith(".")}
    assert modes and set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items() if v != 0o644}
    ref = load_results(run)
    out_rel = ref["output_image"].iloc[5]
    in_rel = ref["input_image"].iloc[0]
    data = (run / out_rel).read_bytes()
    (run / out_rel).write_bytes(data[: len(data) // 2])  # truncated
    (run / in_rel).write_bytes(b"\x89PNG garbage")  # corrupt input image
    orphan = run / "shards" / ".r000-000009-abcd.parquet.x1y2.tmp"
    orphan.write_bytes(b"half a shard")

    bad = bad_stored_images(run, ref)
    assert set(bad["file"]) == {out_rel, in_rel}
    from typer.testing import CliRunner

    from ip2p.cli import app

    agg = CliRunner().invoke(app, ["aggregate", str(run)])
    assert agg.exit_code == 0 and out_rel in agg.output and in_rel in agg.output, agg.output
    assert not (run / "sweep_ends.csv").exists()  # no CLIP metrics: no sweep ends to write
    from bench.report import build_report

    html = build_report(run).read_text()
    assert out_rel in html and "corrupt" in html

    res = run_sweep(parse_spec(tiny_spec(None)), run, progress=False)
    assert res.units_run == 1 and res.stats["units_repaired"] == 1
    assert (run / out_rel).read_bytes() == data
    assert bad_stored_images(run, load_results(run)).empty
    assert not orphan.exists()
    assert_same_rows(load_results(run), ref)


def test_huge_grid_is_refused_quickly_in_bounded_memory():
    spec = tiny_spec(None)
    spec["methods"][0]["grid"]["image_guidance_scale"] = {"start": 1.0, "stop": 2.2, "step": 1e-9}
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(SpecError, match=r"grid\.image_guidance_scale: the grid has 1,200,000,001 values.*max_units"):
            parse_spec(spec)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 20e6
    # a product of grids over the limit names every knob and the count
    spec["methods"][0]["grid"] = {"guidance_scale": list(np.linspace(1, 9, 2000).round(6)),
                                  "image_guidance_scale": list(np.linspace(1, 2, 600).round(6))}
    with pytest.raises(SpecError, match=r"guidance_scale 2,000 x image_guidance_scale 600 = 1,200,000 settings"):
        parse_spec(spec)
    spec["max_units"] = 2_000_000
    assert parse_spec(spec).methods[0].n_settings() == 1_200_000  # the limit is configurable


def test_sweep_refuses_more_units_than_the_limit_before_expanding(tmp_path):
    spec = tiny_spec(None)
    spec["max_units"] = 10  # 3 items x 4 settings = 12 units
    with pytest.raises(SpecError, match=r"4 settings x 3 items x 1 seeds = 12 work units, more than max_units=10"):
        run_sweep(parse_spec(spec), tmp_path / "run", progress=False)
    assert not load_results(tmp_path / "run").size


@pytest.mark.parametrize("seeds,match", [
    ([-1], r"seeds\[0\]: -1 is outside 0..9223372036854775807"),
    ([0, 2**63], r"seeds\[1\]: 9223372036854775808 is outside"),
    ([3, 3], r"seeds: values \[0\] 3 and \[1\] 3 are the same value"),
])
def test_seeds_outside_the_generator_range_or_repeated_are_refused(seeds, match):
    spec = tiny_spec(None)
    spec["seeds"] = seeds
    with pytest.raises(SpecError, match=match):
        parse_spec(spec)
    spec["seeds"] = [0, 2**63 - 1]
    assert parse_spec(spec).seeds == [0, 2**63 - 1]


def test_grid_values_equal_as_numbers_and_non_finite_knobs_are_refused():
    spec = tiny_spec(None)
    spec["methods"][0]["grid"]["image_guidance_scale"] = [1, 1.0, 1.5]
    with pytest.raises(SpecError, match=r"grid\.image_guidance_scale: values \[0\] 1 and \[1\] 1.0 are equal as numbers"):
        parse_spec(spec)
    for bad in (float("nan"), float("inf")):
        spec = tiny_spec(None)
        spec["methods"][0]["grid"]["guidance_scale"] = [7.5, bad]
        with pytest.raises(SpecError, match=r"grid\.guidance_scale\[1\]: must be a finite number"):
            parse_spec(spec)
        spec = tiny_spec(None)
        spec["methods"][0]["knobs"]["guidance_scale"] = bad
        del spec["methods"][0]["grid"]["guidance_scale"]
        with pytest.raises(SpecError, match=r"knobs\.guidance_scale: must be a finite number"):
            parse_spec(spec)


def _jsonl_with_bad_mask(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"in{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"out{i}.png")
        m = np.zeros((64, 64), dtype=np.uint8)
        m[10:30, 10:30] = 255
        Image.fromarray(m).save(folder / f"mask{i}.png")
        lines.append({"id": f"item{i}", "input_image": f"in{i}.png", "edited_image": f"out{i}.png",
                      "mask": f"mask{i}.png", "instruction": "make it red", "input_caption": "a", "output_caption": "b"})
    (folder / "mask1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")  # undecodable mask
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_on_bad_row_skip_covers_an_undecodable_mask(tmp_path):
    manifest = _jsonl_with_bad_mask(tmp_path / "data")
    spec = tiny_spec(None)
    spec["dataset"] = {"kind": "jsonl", "path": str(manifest)}
    with pytest.raises(DataRowError, match=r"test.jsonl:2: field 'mask'"):
        run_sweep(parse_spec(spec), tmp_path / "raise", progress=False)
    res = run_sweep(parse_spec(spec), tmp_path / "skip", progress=False, on_bad_row="skip")
    df = load_results(tmp_path / "skip")
    assert sorted(df["item_id"].unique()) == ["item0", "item2"] and len(df) == 8
    assert df["masked_l1_outside"].notna().all()
    assert len(res.stats["bad_rows"]) == 1 and "mask" in res.stats["bad_rows"][0]


def test_a_mask_that_breaks_after_the_dataset_was_opened_is_skipped_too(tmp_path):
    """The sweep-time path: images are read again per batch; a row broken meanwhile follows the policy."""
    from bench import sweep as sweep_mod

    manifest = _jsonl_with_bad_mask(tmp_path / "data")
    (tmp_path / "data" / "mask1.png").write_bytes((tmp_path / "data" / "mask0.png").read_bytes())
    spec = tiny_spec(None)
    spec["dataset"] = {"kind": "jsonl", "path": str(manifest)}
    real = sweep_mod.load_items

    def load_then_break(*a, **k):
        items = real(*a, **k)
        (tmp_path / "data" / "mask2.png").write_bytes(b"broken")
        return items

    sweep_mod.load_items = load_then_break
    try:
        res = run_sweep(parse_spec(spec), tmp_path / "run", progress=False, on_bad_row="skip")
    finally:
        sweep_mod.load_items = real
    df = load_results(tmp_path / "run")
    assert sorted(df["item_id"].unique()) == ["item0", "item1"]
    assert res.stats["items_skipped"] == 1
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"]["state"] == "incomplete"


def test_partial_runs_say_so_and_a_dead_invocation_is_not_running_forever(tmp_path):
    from bench.testing import random_clip_folder

    clip = random_clip_folder(tmp_path / "clip")  # the figure needs the CLIP metrics
    run = tmp_path / "run"
    small = tiny_spec(clip, items=2)
    run_sweep(parse_spec(small), run, progress=False)
    # a grown spec whose sweep dies at once: the manifest says "running", nobody holds the folder
    grown = tiny_spec(clip, items=3)
    env = {**_env(), "IP2P_BENCH_KILL_AFTER": "batch:1"}
    path = tmp_path / "grown.yaml"
    path.write_text(yaml.safe_dump(grown))
    proc = subprocess.run([sys.executable, "-m", "ip2p.cli", "sweep", str(path), "--out", str(run), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((run / "manifest.json").read_text())["status"]["state"] == "running"
    state = run_state(run)
    assert (state.state, state.done, state.total) == ("interrupted", 8, 12) and state.partial
    from typer.testing import CliRunner

    from ip2p.cli import app

    for cmd in (["aggregate", str(run)], ["plot", str(run)], ["report", str(run)]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 0, r.output
        assert "partial results: 8 of 12 units done (interrupted)" in r.output, (cmd, r.output)
    html = (run / "report.html").read_text()
    assert "8 of 12 units done (interrupted)" in html and "id='partial'" in html
    assert (run / "edits.png").is_file()  # `ip2p report` writes the per-category figure beside the report
    ends = pd.read_csv(run / "sweep_ends.csv")  # `ip2p aggregate`: the sweep's paired end-to-end differences
    assert set(ends["metric"]) == {"clip_sim_direction", "clip_sim_image"} and (ends["n_items"] == 2).all()
    run_sweep(parse_spec(grown), run, progress=False)
    assert (run_state(run).state, run_state(run).done) == ("complete", 12)
    r = CliRunner().invoke(app, ["aggregate", str(run)])
    assert "partial results" not in r.output and "units done" not in r.output


def test_a_running_sweep_is_reported_running(tmp_path):
    run = tmp_path / "run"
    run_sweep(parse_spec(tiny_spec(None, items=1)), run, progress=False)
    man = json.loads((run / "manifest.json").read_text())
    man["invocations"].append({"id": "x", "started": "now"})  # a sweep that has just started ...
    (run / "manifest.json").write_text(json.dumps(man))
    store = RunStore(run)
    with store.mutex():
        holder = store.hold_active()  # ... and holds the folder
    try:
        assert run_state(run).state == "running"
    finally:
        holder.close()
    assert run_state(run).state == "interrupted"
