"""Every user-input error of the CLI is one line on stderr naming the item, the field and the fix,
with exit status 2, found before any model loads; internal errors keep their traceback (exit 1).
Each case runs `python -m ip2p.cli ...` in its own process, as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from PIL import Image

from bench.spec import parse_spec
from bench.sweep import run_sweep
from bench.testing import tiny_spec

REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ip2p.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """An input image, a finished tiny run folder, specs with one fault each."""
    root = tmp_path_factory.mktemp("cli")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "in.png")
    (root / "a_file").write_text("x")
    (root / "folder").mkdir()
    run_sweep(parse_spec(tiny_spec(None, items=1)), root / "run", progress=False)

    def spec(name, change):
        s = tiny_spec(None, items=1)
        change(s)
        (root / f"{name}.yaml").write_text(yaml.safe_dump(s))

    spec("nan", lambda s: s["methods"][0]["grid"].update(guidance_scale=[7.5, float("nan")]))
    spec("seed", lambda s: s.update(seeds=[-1]))
    spec("huge", lambda s: s["methods"][0]["grid"].update(image_guidance_scale={"start": 1, "stop": 2, "step": 1e-9}))
    spec("dup", lambda s: s["methods"][0]["grid"].update(image_guidance_scale=[1, 1.0]))
    spec("steps", lambda s: s["methods"][0]["knobs"].update(num_inference_steps=0))
    spec("resize", lambda s: s["methods"][0]["knobs"].update(resize="huge"))
    spec("ok", lambda s: None)
    return root


EDIT = ["edit", "in.png", "-i", "make it red", "--model", "tiny"]
# (arguments, words the one line must contain)
CASES = [
    (["edit", "missing.png", "-i", "x"], ["input image", "missing.png", "not found"]),
    ([*EDIT, "--steps", "0"], ["--steps 0", ">= 1"]),
    ([*EDIT, "--steps", "abc"], ["--steps", "integer"]),
    ([*EDIT, "--image-guidance", "nan"], ["--image-guidance nan", "finite"]),
    ([*EDIT, "--text-guidance", "inf"], ["--text-guidance inf", "finite"]),
    ([*EDIT, "--seed", "-1"], ["--seed -1", "0..9223372036854775807"]),
    ([*EDIT, "--seed", str(2**63)], ["--seed 9223372036854775808", "0..9223372036854775807"]),
    ([*EDIT, "--resize", "big"], ["--resize 'big'", "paper, diffusers, none"]),
    ([*EDIT, "--dtype", "float8"], ["--dtype 'float8'", "float32"]),
    ([*EDIT, "--scheduler", "NoSuchScheduler"], ["--scheduler 'NoSuchScheduler'", "DDIMScheduler"]),
    ([*EDIT, "--device", "cuda:99"], ["--device 'cuda:99'", "use"]),
    ([*EDIT, "--device", "gpu"], ["--device 'gpu'", "not a torch device"]),
    ([*EDIT, "--out", "folder"], ["--out folder", "is a folder"]),
    ([*EDIT, "--out", "a_file/x.png"], ["--out a_file/x.png", "is a file"]),
    (["sweep", "nan.yaml"], ["methods[0].grid.guidance_scale[1]", "finite"]),
    (["sweep", "seed.yaml"], ["seeds[0]", "-1", "outside"]),
    (["sweep", "huge.yaml"], ["methods[0].grid.image_guidance_scale", "1,000,000,001 values", "max_units"]),
    (["sweep", "dup.yaml"], ["methods[0].grid.image_guidance_scale", "equal as numbers"]),
    (["sweep", "steps.yaml"], ["methods[0].knobs.num_inference_steps", ">= 1"]),
    (["sweep", "resize.yaml"], ["methods[0].knobs.resize", "paper"]),
    (["sweep", "ok.yaml", "--device", "cuda:99", "--out", "r1"], ["--device 'cuda:99'"]),
    (["sweep", "ok.yaml", "--out", "a_file"], ["--out a_file", "is a file"]),
    (["sweep", "ok.yaml", "--on-bad-row", "ignore"], ["--on-bad-row 'ignore'", "raise or skip"]),
    (["sweep", "ok.yaml", "--max-units", "0"], ["--max-units 0", ">= 1"]),
    (["aggregate", "run", "--n-boot", "0"], ["--n-boot 0", ">= 1"]),
    (["aggregate", "run", "--metrics", "clip_sim_direction"], ["--metrics", "'clip_sim_direction'", "l1"]),
    (["aggregate", "run", "--category", "nosuch"], ["--category", "'nosuch'", "(all)"]),
    (["aggregate", "no-run"], ["run folder not found", "no-run"]),
    (["plot", "run", "--category", "nosuch"], ["--category", "'nosuch'"]),
    (["plot", "run", "--n-boot", "0"], ["--n-boot 0"]),
    (["report", "run", "--items", "-1"], ["--items -1", ">= 0"]),
    (["report", "run", "--out", "folder"], ["--out folder", "is a folder"]),
    (["train", "--base", "world:sd", "--data", "world:train", "--out", "t", "--steps", "0"], ["max_steps=0", ">= 1"]),
    (["train", "--base", "world:sd", "--data", "world:train", "--out", "t", "--on-bad-row", "x"], ["on_bad_row", "raise or skip"]),
]


@pytest.mark.slow
def test_user_input_errors_are_one_line_with_exit_status_2(place):
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: _cli(case[0], place), CASES))
    failures = []
    for (args, words), r in zip(CASES, results):
        lines = r.stderr.strip().splitlines()
        ok = r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words)
        if not ok:
            failures.append(f"{' '.join(args)}: rc={r.returncode} stderr={r.stderr[-600:]!r}")
    assert not failures, "\n".join(failures)
    assert not (place / "r1").exists()  # refused before anything was written


def test_an_internal_error_keeps_its_traceback(tmp_path):
    """A bug is not dressed up as a user error: a method whose code fails -> exit 1 with its traceback.
    (A corrupt shard file is healed since issue 22: tests/test_damaged_inputs.py.)"""
    (tmp_path / "buggy_method.py").write_text(
        "from ip2p.registry import register_method\n"
        "def _factory(model=None, device='cpu', **kw):\n"
        "    raise ZeroDivisionError('a bug in the method')\n"
        "register_method('buggy', _factory, {}, default_model='none')\n")
    s = tiny_spec(None, items=1)
    s["methods"] = [{"name": "buggy"}]
    s["plugins"] = ["buggy_method"]
    (tmp_path / "buggy.yaml").write_text(yaml.safe_dump(s))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    r = subprocess.run([sys.executable, "-m", "ip2p.cli", "sweep", "buggy.yaml", "--out", "r", "--no-progress"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr, r.stderr


@pytest.mark.slow
def test_resuming_training_past_its_steps_is_refused(tmp_path):
    from ip2p.train import TrainConfig, train
    from ip2p.train.tiny import make_tiny_sd

    base = make_tiny_sd(tmp_path / "sd", seed=0)
    kw = dict(base=str(base), data="world:train", data_options={"n": 8}, batch_size=1, resolution=32, val_examples=0,
              progress=False, report_to="none", checkpoint_every=0)
    train(TrainConfig(out=str(tmp_path / "out"), max_steps=2, **kw))
    r = _cli(["train", "--base", str(base), "--data", "world:train", "--data-option", "n=8", "--out",
              str(tmp_path / "out"), "--resume", "latest", "--steps", "1", "--batch-size", "1", "--resolution", "32",
              "--val-examples", "0", "--report-to", "none", "--no-progress"], tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "--steps 1" in lines[0] and "step 2" in lines[0] and "--steps 2 or more" in lines[0]
    # equal steps: nothing to train, the checkpoint's step is what is exported and said
    out = train(TrainConfig(out=str(tmp_path / "out"), max_steps=2, resume="latest", **kw))
    import json

    assert json.loads((out / "training_config.json").read_text())["final_step"] == 2
