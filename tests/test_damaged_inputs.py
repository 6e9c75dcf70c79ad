"""Damaged run folders, files and images are clear errors or healed, never tracebacks: a truncated
result shard or a stray file in ``shards/`` is skipped by readers (with a warning) and moved to
``quarantine/`` by the next sweep, which regenerates its units; a corrupt or non-UTF-8
``manifest.json`` is survived; a non-UTF-8 or unit-less golden is one error; a full disk or a
read-only place is one line with exit 2; images too small, too large, or of extreme aspect ratio
are refused naming the sizes before any expensive work (``ip2p.util.limits``)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.regress import read_golden
from bench.spec import parse_spec
from bench.store import RunStore, load_results
from bench.sweep import run_sweep
from bench.testing import tiny_spec
from ip2p.errors import ImageReadError, SpecError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ip2p.cli", *map(str, args)], env=ENV, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _one_error_line(res, code=2):
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "it/s" not in ln and "batch/s" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture()
def run(tmp_path):
    """A finished tiny run: 2 items x 4 settings = 8 units in 2 shards of 4 rows."""
    spec = parse_spec(tiny_spec(None, items=2))
    run_sweep(spec, tmp_path / "run", progress=False, shard_rows=4)
    assert len(RunStore(tmp_path / "run").shard_files()) == 2
    return tmp_path / "run", spec


def _damage(run: Path, how: str) -> str:
    shards = RunStore(run).shard_files()
    if how == "truncated":
        data = shards[0].read_bytes()
        shards[0].write_bytes(data[: len(data) // 2])
        return shards[0].name
    if how == "garbage":
        (run / "shards" / "r000-000099-0123abcd.parquet").write_bytes(os.urandom(300))
        return "r000-000099-0123abcd.parquet"
    if how == "stray":
        (run / "shards" / "notes.parquet").write_text("my notes")
        (run / "shards" / "r000-000100-0123abcd.parquet").mkdir()
        return "notes.parquet"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "garbage", "stray"])
def test_a_damaged_shard_is_skipped_by_readers_and_healed_by_the_sweep(run, how):
    run_dir, spec = run
    name = _damage(run_dir, how)
    for cmd in (["aggregate", run_dir, "--n-boot", "10"], ["report", run_dir, "--items", "1"]):
        res = _cli(*cmd)
        assert res.returncode == 0, res.stderr
        assert f"warning: " in res.stderr and name in res.stderr and "Traceback" not in res.stderr
    lost = 4 if how == "truncated" else 0
    assert len(load_results(run_dir)) == 8 - lost
    res = run_sweep(spec, run_dir, progress=False, shard_rows=4)
    assert res.units_run == lost and res.stats["shards_quarantined"]
    assert any(name in s for s in res.stats["shards_quarantined"])
    assert (run_dir / "quarantine" / "shards" / name).exists()
    assert RunStore(run_dir).bad_shards() == {} and len(load_results(run_dir)) == 8


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b'{"invocations": [1, 2', b'[1, 2]',
                                     b'{"invocations": "x", "status": 3}'])
def test_a_corrupt_manifest_is_survived(run, content):
    run_dir, spec = run
    (run_dir / "manifest.json").write_bytes(content)
    (run_dir / "units.json").write_bytes(content)
    res = _cli("aggregate", run_dir, "--n-boot", "10")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert run_sweep(spec, run_dir, progress=False).units_run == 0
    assert json.loads((run_dir / "manifest.json").read_text())["status"]["state"] == "complete"


def test_a_non_utf8_or_unitless_golden_is_one_error(tmp_path):
    g = tmp_path / "g.json"
    g.write_bytes(b'{"format": "ip2p-bench golden 1", "suite": "caf\xe9"}')
    with pytest.raises(SpecError, match="not UTF-8"):
        read_golden(g)
    doc = {"format": "ip2p-bench golden 1", "measurement": {"items": {}, "seeds": [0], "methods": {},
                                                            "metric_spec": {}}, "units": [], "columns": [],
           "models": {}}
    g.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="holds no units"):
        read_golden(g)
    doc["units"] = {"not": "a list"}
    g.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="'units' is a dict"):
        read_golden(g)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_disk_or_read_only_folder_is_one_line(run, monkeypatch, capsys, code):
    run_dir, _ = run

    def no_space(*a, **k):
        raise OSError(code, os.strerror(code), str(k.get("dir") or run_dir))

    monkeypatch.setattr(tempfile, "mkstemp", no_space)  # what atomic_write_bytes calls to write anything
    from ip2p import cli

    for argv in (["ip2p", "aggregate", str(run_dir), "--n-boot", "10"], ["ip2p", "report", str(run_dir)]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and os.strerror(code) in err[0], err


# ---- image sizes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def editor():
    from ip2p.editor import load_editor

    return load_editor("tiny", device="cpu")


@pytest.mark.parametrize("size,resize,words", [
    ((1, 1), None, "size 1x1"), ((2, 2), None, "shorter than 4 px"),
    ((1, 1), "diffusers", "gives 0x0"), ((3, 3), "diffusers", "gives 2x2"),
    ((8, 2000), "paper", "gives 64x16000, a side longer than 1024 px"),
    ((3000, 4), None, "a side longer than 1024 px"),
])
def test_sizes_a_model_cannot_take_are_refused_naming_them(editor, size, resize, words):
    x = torch.rand(3, size[1], size[0])
    t0 = time.time()
    with pytest.raises(ImageReadError, match=words):
        editor.edit(x, "x", num_inference_steps=2, resize=resize)
    assert time.time() - t0 < 5  # refused before sampling


def test_small_images_still_edit_by_the_paper_resize(editor):
    for s in (1, 2):
        assert editor.edit(torch.rand(3, s, s), "x", num_inference_steps=2).shape[-2:] == (64, 64)


def test_the_side_limit_is_overridable(editor, monkeypatch):
    monkeypatch.setenv("IP2P_MAX_SIDE", "20000")
    from ip2p.core import process_input

    assert process_input(torch.rand(3, 200, 8), "paper", 16).shape == (3, 1600, 64)


def test_a_huge_image_is_refused_from_its_header(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    Image.new("RGB", (8000, 8000), (1, 2, 3)).save(p)
    from ip2p.util.io import load_image

    t0 = time.time()
    with pytest.raises(ImageReadError, match=r"8000x8000 = 64.0 megapixels, more than the limit of 40 MP"):
        load_image(p)
    assert time.time() - t0 < 2
    monkeypatch.setenv("IP2P_MAX_INPUT_PIXELS", "100")
    with pytest.raises(ImageReadError, match="more than the limit"):
        load_image(tmp_path / "small.png" if Image.new("RGB", (20, 20)).save(tmp_path / "small.png") else p)


def test_cli_refuses_extreme_sizes_with_one_line(tmp_path):
    Image.new("RGB", (8, 2000), (1, 2, 3)).save(tmp_path / "thin.png")
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "two.png")
    line = _one_error_line(_cli("edit", "thin.png", "-i", "x", "--model", "tiny", "--steps", "2", cwd=tmp_path))
    assert "64x16000" in line and "IP2P_MAX_SIDE" in line
    line = _one_error_line(_cli("edit", "two.png", "-i", "x", "--model", "tiny", "--steps", "2", "--resize", "none",
                                cwd=tmp_path))
    assert "2x2" in line
