"""The same sweep under ``torchrun --nproc_per_node 2`` (CPU, gloo) gives exactly the rows of a
single-process run: each rank takes its batches, writes its own shards, rank 0 completes the
manifest after a barrier."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.spec import parse_spec
from bench.store import RunStore, load_results
from bench.sweep import run_sweep
from bench.testing import assert_same_rows, random_clip_folder, tiny_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    clip = random_clip_folder(tmp_path / "clip")
    spec = tiny_spec(clip, items=4)
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run2 = tmp_path / "two"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ip2p.cli", "sweep",
                             str(spec_path), "--out", str(run2), "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run1 = tmp_path / "one"  # the single-process reference runs meanwhile
    run_sweep(parse_spec(spec), run1, progress=False)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, (out + err)[-3000:]
    ranks = {p.name[:4] for p in RunStore(run2).shard_files()}
    assert ranks == {"r000", "r001"}  # both processes did work and wrote their own shards
    per_rank = [json.loads((run2 / "ranks" / f"r00{r}.json").read_text()) for r in (0, 1)]
    assert [p["world_size"] for p in per_rank] == [2, 2]
    assert sum(p["units_run"] for p in per_rank) == 16 and all(p["units_run"] > 0 for p in per_rank)
    assert_same_rows(load_results(run2), load_results(run1))
    man = json.loads((run2 / "manifest.json").read_text())
    assert man["status"]["state"] == "complete" and man["status"]["rows"] == 16
    assert man["invocations"][-1]["world_size"] == 2
