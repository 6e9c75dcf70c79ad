"""Interrupting a sweep anywhere (here: SIGKILL between storing a batch's images and flushing its
rows) and running it again completes the run with exactly the rows of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.spec import parse_spec
from bench.store import load_results
from bench.sweep import KILL_ENV, run_sweep
from bench.testing import assert_same_rows, random_clip_folder, tiny_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return random_clip_folder(tmp_path_factory.mktemp("clip") / "clip")


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_rows(tmp_path, clip_dir):
    """SIGKILL after the 2nd batch's images are stored but before its rows are flushed; the
    rerun completes the run row for row. (The uninterrupted reference runs in this process
    while the doomed sweep runs in a child.)"""
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(clip_dir)))
    run = tmp_path / "run"
    env = {**os.environ, KILL_ENV: "batch:2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "ip2p.cli", "sweep", str(spec_path), "--out", str(run),
                             "--shard-rows", "4", "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ref_run = tmp_path / "reference"
    run_sweep(parse_spec(tiny_spec(clip_dir)), ref_run, progress=False)
    ref = load_results(ref_run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    partial = load_results(run)
    assert len(partial) == 4  # the first batch was flushed; the second died in memory
    stored_images = {p.relative_to(run).as_posix() for p in (run / "images").rglob("*.png")}
    assert len(stored_images - set(partial["output_image"]) - set(partial["input_image"]) - set(partial["target_image"])) > 0
    res = run_sweep(parse_spec(tiny_spec(clip_dir)), run, progress=False)
    assert (res.units_skipped, res.units_run) == (4, 8)
    assert_same_rows(load_results(run), ref)
    assert json.loads((run / "manifest.json").read_text())["status"]["state"] == "complete"
