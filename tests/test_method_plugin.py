"""A user's own method, defined outside the package (here: written by this test into a module of its
own), registers through ``ip2p.registry``, is validated in a spec from its declared knobs and is swept by
``ip2p sweep``, with no change to ``bench/``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

USER_METHOD = '''
"""A user's posterize 'editor': quantise each channel to `levels` values (no model, no noise)."""
import hashlib

import torch

from ip2p.protocol import Knob, knob_defaults, resolve_knobs
from ip2p.registry import register_method


class Posterize:
    name = "posterize"
    declared_knobs = {"levels": Knob("int", default=4, minimum=2, maximum=256, doc="values per channel")}
    knobs = knob_defaults(declared_knobs)

    def identity(self):
        return {"method": self.name, "weights_hash": hashlib.sha256(b"posterize-v1").hexdigest()[:16]}

    def metric_input(self, request):
        return request.image

    def run(self, requests):
        out = []
        for i, r in enumerate(requests):
            k = resolve_knobs(self.declared_knobs, r.knobs, method=self.name, item_id=r.item_id, index=i)
            n = k["levels"] - 1
            out.append(torch.round(r.image * n) / n)
        return out


register_method("posterize", lambda model=None, device=None, **options: Posterize(), editor_class=Posterize,
                description="posterize (a user's plugin)", curve_knob="levels")
'''


def _spec(levels, plugins=True) -> dict:
    spec = {
        "name": "plugin",
        "dataset": {"kind": "world", "split": "test", "limit": 2},
        "methods": [{"name": "posterize", "grid": {"levels": levels}}],
        "metrics": {"compute": ["pixel"]},
        "seeds": [0],
        "batch_size": 4,
        "device": "cpu",
    }
    if plugins:
        spec["plugins"] = ["user_methods"]
    return spec


def _run(tmp_path: Path, spec: dict, out: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "user_methods.py").write_text(USER_METHOD)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "ip2p.cli", "sweep", str(path), "--out", str(tmp_path / out),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_method_from_a_users_module_is_validated_and_swept(tmp_path):
    from bench.store import load_results

    res = _run(tmp_path, _spec([2, 8]), "run")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = load_results(tmp_path / "run")
    assert len(rows) == 4 and set(rows["method"]) == {"posterize"}
    l1 = rows.groupby("knob_levels")["l1"].mean()
    assert l1[2.0] > l1[8.0] > 0  # coarser posterizing moves pixels further from the input
    identity = json.loads(rows["model_identity"].iloc[0])
    assert identity["method"] == "posterize" and identity["weights_hash"]

    bad = _run(tmp_path, _spec([1, 8]), "bad")  # below the declared minimum: refused before any work
    assert bad.returncode == 2
    assert "methods[0].grid.levels[0]" in bad.stderr and ">= 2" in bad.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").rglob("*.parquet"))


def test_the_plugin_environment_variable_registers_too(tmp_path):
    res = _run(tmp_path, _spec([4], plugins=False), "env", {"IP2P_PLUGINS": "user_methods"})
    assert res.returncode == 0, res.stderr[-2000:]
    unknown = _run(tmp_path, _spec([4], plugins=False), "none")
    assert unknown.returncode == 2 and "unknown method 'posterize'" in unknown.stderr


def test_the_edit_commands_defaults_are_the_declared_knobs():
    """`ip2p edit` states InstructPix2Pix's knob defaults; they must be the method's one declaration."""
    import inspect

    from ip2p.editor import InstructPix2PixEditor
    from ip2p.editor_cli import edit_command

    params = inspect.signature(edit_command).parameters
    declared = InstructPix2PixEditor.declared_knobs
    for option, knob in (("image_guidance", "image_guidance_scale"), ("text_guidance", "guidance_scale"),
                         ("steps", "num_inference_steps")):
        assert params[option].default.default == declared[knob].default, option
