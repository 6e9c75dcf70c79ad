"""Open registries: a user's module (written by this test) registers a new dataset kind and a new
metric group; a spec naming both (``plugins: [user_registry]``) validates and is swept by
``ip2p sweep``, and the group's column is in the rows, with its declared direction in their
``metric_spec``. Each benchmark is a record chosen by lookup (``bench.benchmarks``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = '''
"""A user's dataset kind (grey squares, one level per line of a text file) and metric group (mean brightness)."""
from pathlib import Path

import torch

from ip2p.data.registry import register_dataset_kind
from ip2p.data.types import EditExample
from ip2p.metrics.groups import MetricColumn, register_metric_group


def open_squares(location, *, split=None, bad=None):
    for i, line in enumerate(Path(location).read_text().split()):
        level = float(line)
        yield EditExample(item_id=f"sq{i}", instruction="make it brighter", input_image=torch.full((3, 32, 32), level),
                          input_caption="a grey square", output_caption="a bright square", source=f"{location}:{i}")


class Brightness:
    def __call__(self, inputs, outputs, text_0, text_1, targets=None, masks=None):
        return {"brightness": outputs.mean(dim=(1, 2, 3))}

    def spec(self):
        return {"definition": "mean(output)"}


register_dataset_kind("squares", open_squares, description="grey squares, one level per line", verify=False)
register_metric_group("brightness", build=lambda metrics, device: Brightness(),
                      columns=[MetricColumn("brightness", "higher", 0.01, "[0,1] range")])
'''


def _spec(kind="squares", group="brightness", plugins=True) -> dict:
    spec = {
        "name": "registries",
        "dataset": {"kind": kind, "path": "levels.txt"},
        "methods": [{"name": "identity"}],
        "metrics": {"compute": ["pixel", group]},
        "seeds": [0],
        "batch_size": 4,
        "device": "cpu",
    }
    if plugins:
        spec["plugins"] = ["user_registry"]
    return spec


def _run(tmp_path: Path, spec: dict, out: str) -> subprocess.CompletedProcess:
    (tmp_path / "user_registry.py").write_text(USER_MODULE)
    (tmp_path / "levels.txt").write_text("0.2\n0.5\n0.8\n")
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", "ip2p.cli", "sweep", str(path), "--out", str(tmp_path / out),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_a_plugin_dataset_kind_and_metric_group_sweep_from_a_spec(tmp_path):
    from bench.store import load_results

    res = _run(tmp_path, _spec(), "run")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = load_results(tmp_path / "run")
    assert sorted(rows["item_id"]) == ["sq0", "sq1", "sq2"]
    # the identity editor returns the kind's squares: the group's column is each square's level
    got = rows.set_index("item_id")["brightness"].sort_index()
    assert got.tolist() == pytest.approx([0.2, 0.5, 0.8], abs=1 / 255)  # outputs are stored as 8-bit PNGs
    assert (rows["l1"] == 0).all()
    spec = json.loads(rows["metric_spec"].iloc[0])
    assert spec["groups"] == ["pixel", "brightness"]
    assert spec["plugin_groups"]["brightness"]["columns"]["brightness"]["better"] == "higher"
    assert spec["plugin_groups"]["brightness"]["definition"] == "mean(output)"


@pytest.mark.parametrize("spec, message", [
    (_spec(plugins=False), "dataset.kind: unknown kind 'squares'; known: "),
    (_spec(kind="world", group="sharpness"), "metrics.compute[1]: unknown metric group 'sharpness'; known: "),
])
def test_unregistered_names_are_refused_naming_the_field(tmp_path, spec, message):
    res = _run(tmp_path, spec, "bad")
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]


def test_each_benchmark_is_a_record_chosen_by_lookup():
    from bench.benchmarks import GENERIC, get_benchmark, official_name
    from bench.spec import load_spec
    from ip2p.data.types import EditExample
    from ip2p.metrics.groups import metric_groups

    assert get_benchmark("pie_bench").split == "none" and get_benchmark("official").split == "spec"
    assert not get_benchmark("world").needs_path and get_benchmark("magicbrush").needs_path
    assert get_benchmark("a-kind-a-plugin-adds") is GENERIC and GENERIC.official_name is None
    ex = EditExample(item_id="test/add/7", instruction="x", input_image=None, metadata={"image_path": "0/a.jpg"})
    assert official_name("emu_edit", ex) == "test/add/7.png"
    assert official_name("pie_bench", ex) == "annotation_images/0/a.jpg"
    assert official_name("jsonl", ex) is None
    groups = metric_groups()
    for kind in ("magicbrush", "pie_bench", "emu_edit", "editworld"):
        bm = get_benchmark(kind)
        assert set(bm.default_metrics) <= set(groups)
        # each shipped benchmark suite scores what the benchmark's authors score
        assert set(bm.default_metrics) <= set(load_spec(kind, check_paths=False).metrics.compute), kind
