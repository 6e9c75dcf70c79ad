"""No silent wrong results: exports follow the umask, a spec holds each key once and no boolean
integers, the Python API refuses what the CLI refuses, a shrunk spec does not aggregate old items
without a word, and a resumed sweep cannot change its batch size (outputs depend on batch mates by
float rounding)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bench.spec import load_spec, parse_spec
from bench.store import current_rows, load_results
from bench.sweep import run_sweep
from bench.testing import tiny_spec
from ip2p.errors import SpecError
from ip2p.protocol import KnobError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_export_follows_the_umask(tmp_path):
    from ip2p.export import export_single_file
    from ip2p.models import load_components

    c = load_components("tiny")
    old = os.umask(0o022)
    try:
        paths = [export_single_file(c, tmp_path / "m.safetensors"), export_single_file(c, tmp_path / "m.ckpt")]
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {"0o644"}


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_duplicate_yaml_keys_are_refused_naming_the_key(tmp_path):
    base = yaml.safe_dump(tiny_spec(None, items=1), sort_keys=False)
    with pytest.raises(SpecError, match=r"line \d+: .*duplicate key 'seeds' \(first on line \d+\)"):
        load_spec(_write(tmp_path, base + "seeds: [5]\n"))
    nested = base.replace("knobs:\n", "knobs:\n    num_inference_steps: 3\n", 1)
    with pytest.raises(SpecError, match="duplicate key 'num_inference_steps'"):
        load_spec(_write(tmp_path, nested))
    anchors = "base: &b {a: 1}\nother:\n  <<: *b\n  a: 2\n"  # a merge key may be overridden: YAML's rule
    from ip2p.util.textfiles import load_yaml

    assert load_yaml(_write(tmp_path, anchors), SpecError)["other"] == {"a": 2}


def test_non_utf8_spec_is_one_error(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(yaml.safe_dump(tiny_spec(None)).encode() + b"description: caf\xe9\n")
    with pytest.raises(SpecError, match=r"not UTF-8 text \(byte 0xe9"):
        load_spec(p)


@pytest.mark.parametrize("change,field", [
    (lambda s: s.update(seeds=[True]), "seeds.0"),
    (lambda s: s.update(seeds=[0, False]), "seeds.1"),
    (lambda s: s.update(batch_size=True), "batch_size"),
    (lambda s: s["dataset"].update(limit=True), "dataset.limit"),
])
def test_a_boolean_is_not_an_integer(change, field):
    s = tiny_spec(None)
    change(s)
    with pytest.raises(SpecError, match="boolean, not an integer"):
        parse_spec(s)


@pytest.fixture(scope="module")
def editor():
    from ip2p.editor import load_editor

    return load_editor("tiny", device="cpu")


@pytest.mark.parametrize("kw,words", [
    ({"seeds": -5}, "seed must be an integer in 0.."), ({"seeds": True}, "seed must be an integer"),
    ({"seeds": 2**63}, "seed must be an integer"), ({"seeds": 1.0}, "seed must be an integer"),
    ({"num_inference_steps": 1.5}, "num_inference_steps must be an integer, got 1.5"),
    ({"num_inference_steps": 2.7}, "num_inference_steps must be an integer, got 2.7"),
    ({"num_inference_steps": 0}, "num_inference_steps must be >= 1"),
    ({"image_guidance_scale": float("nan")}, "finite"),
])
def test_the_python_api_refuses_what_the_cli_refuses(editor, kw, words):
    x = torch.rand(3, 32, 32)
    with pytest.raises(KnobError, match=words.replace("(", r"\(").replace(")", r"\)")):
        editor.edit(x, "make it red", **{"num_inference_steps": 2, **kw})


def test_the_python_api_keeps_integer_scalars_of_numpy_and_torch(editor):
    import numpy as np

    x = torch.rand(3, 32, 32)
    a = editor.edit(x, "red", num_inference_steps=np.int64(2), seeds=torch.tensor(3))
    b = editor.edit(x, "red", num_inference_steps=2, seeds=3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("args,words", [
    (([], "a"), "empty batch"),
    ((torch.rand(0, 3, 32, 32), "a"), "empty batch"),
    ((torch.rand(3, 32, 32), None), "instructions must be a text"),
    ((torch.rand(3, 32, 32), [None]), "instruction must be text"),
    ((torch.empty(3, 32, 32, device="meta"), "a"), "meta tensor"),
])
def test_bad_python_api_input_is_a_clear_error(editor, args, words):
    with pytest.raises(KnobError, match=words):
        editor.edit(*args, num_inference_steps=2)


def test_a_smaller_limit_aggregates_the_newest_specs_items_and_says_so(tmp_path):
    run = tmp_path / "run"
    run_sweep(parse_spec(tiny_spec(None, items=3)), run, progress=False)
    small = tiny_spec(None, items=2)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    run_sweep(parse_spec(small), run, progress=False)
    df, left_out = current_rows(run, load_results(run))
    assert left_out == 4 and df["item_id"].nunique() == 2 and len(load_results(run)) == 12
    res = subprocess.run([sys.executable, "-m", "ip2p.cli", "aggregate", str(run), "--n-boot", "10"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "note: 4 stored row(s) belong to units the newest spec no longer has" in res.stdout
    agg = pd.read_csv(run / "aggregate.csv")
    assert set(agg[agg["category"] == "(all)"]["n_items"]) == {2}


def test_resuming_with_another_batch_size_is_refused(tmp_path):
    run = tmp_path / "run"
    run_sweep(parse_spec(tiny_spec(None, items=2, batch_size=4)), run, progress=False)
    with pytest.raises(SpecError, match=r"batch_size: 3, but the results stored .* batch_size 4"):
        run_sweep(parse_spec(tiny_spec(None, items=3, batch_size=3)), run, progress=False)
    res = run_sweep(parse_spec(tiny_spec(None, items=3, batch_size=4)), run, progress=False)
    assert res.units_run == 4 and res.units_skipped == 8
