"""Experiment specs: every shipped suite validates; malformed specs fail naming the field."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from bench.spec import GridRange, load_spec, parse_spec
from ip2p.errors import SpecError

SUITES = Path(__file__).resolve().parents[1] / "bench" / "suites"


def _base():
    return yaml.safe_load((SUITES / "ci_tiny.yaml").read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in SUITES.glob("*.yaml")))
def test_shipped_suites_validate(name):
    spec = load_spec(name, check_paths=False)
    assert spec.methods and all(m.settings() for m in spec.methods)


def test_paper_figure_suite_is_the_papers_sweep():
    spec = load_spec(SUITES / "paper_fig.yaml", check_paths=False)
    (m,) = spec.methods
    settings = m.settings()
    assert [s["image_guidance_scale"] for s in settings] == [1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2]
    assert {s["guidance_scale"] for s in settings} == {7.5}
    assert {s["num_inference_steps"] for s in settings} == {100}
    assert m.model == "timbrooks/instructpix2pix"
    assert (spec.metrics.clip.model, spec.metrics.clip.pretrained, spec.metrics.clip.preprocess) == ("ViT-L-14", "openai", "paper")
    assert spec.dataset.split == "test" and spec.seeds == [0]
    with pytest.raises(SpecError, match="dataset.path: not found"):  # no data on this machine
        load_spec(SUITES / "paper_fig.yaml")


def test_grid_is_a_cartesian_product_in_order():
    spec = parse_spec(_base())
    s = spec.methods[0].settings()
    assert [(x["guidance_scale"], x["image_guidance_scale"]) for x in s] == [(1.0, 1.0), (1.0, 1.5), (7.5, 1.0), (7.5, 1.5)]
    assert all(x["num_inference_steps"] == 2 for x in s)
    assert GridRange(start=1.0, stop=2.2, step=0.2).values()[-1] == 2.2  # float steps land on the end point


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d["methods"][0]["knobs"].update(image_guidance_scale="high"), r"methods\[0\]\.knobs\.image_guidance_scale: must be a number"),
    (lambda d: d["methods"][0]["knobs"].update(num_inference_steps=0), r"methods\[0\]\.knobs\.num_inference_steps: must be >= 1"),
    (lambda d: d["methods"][0]["knobs"].update(imge_guidance=1), r"methods\[0\]\.knobs\.imge_guidance: method 'instructpix2pix' has no knob"),
    (lambda d: d["methods"][0].update(name="pix2pix-zero"), r"methods\[0\]\.name: unknown method 'pix2pix-zero'; known methods: .*instructpix2pix"),
    (lambda d: d.pop("dataset"), r"dataset: required field is missing"),
    (lambda d: d["dataset"].update(kind="jsonl"), r"dataset\.path: required for dataset kind 'jsonl'"),
    (lambda d: d["dataset"].update(kind="jsonl", path="/no/such/manifest.jsonl"), r"dataset\.path: not found"),
    (lambda d: d["methods"][0]["grid"].update(image_guidance_scale=[]), r"methods\[0\]\.grid\.image_guidance_scale: empty grid"),
    (lambda d: d["methods"][0]["grid"].update(image_guidance_scale={"start": 2, "stop": 1, "step": 0.5}), r"grid\.image_guidance_scale: empty grid"),
    (lambda d: d["methods"][0]["grid"].update(guidance_scale=[1.0, True]), r"grid\.guidance_scale\[1\]: must be a number, got True"),
    (lambda d: d["methods"][0]["grid"].update(num_inference_steps=[2]), r"grid\.num_inference_steps: knob 'num_inference_steps' is both fixed"),
    (lambda d: d["methods"].append(copy.deepcopy(d["methods"][0])), r"methods\[1\]\.label: 'instructpix2pix' is already used"),
    (lambda d: d.update(methods=[]), r"methods: List should have at least 1 item"),
    (lambda d: d["metrics"].update(compute=["clip", "fid"]), r"metrics\.compute\[1\]"),
    (lambda d: d.update(batch_sise=4), r"batch_sise: unknown field"),
    (lambda d: d["dataset"].update(limit=-3), r"dataset\.limit: Input should be greater than 0"),
])
def test_spec_errors_name_the_field(mutate, pattern):
    d = _base()
    mutate(d)
    with pytest.raises(SpecError, match=pattern):
        parse_spec(d, source="suite.yaml")


def test_load_spec_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmethods: [\n")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        load_spec(p)
    d = _base()
    d["methods"][0]["knobs"]["guidance_scale"] = "x"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError, match=r"bad.yaml: methods\[0\]\.knobs\.guidance_scale"):
        load_spec(p)


def test_fingerprint_ignores_grids_and_limits_but_not_models():
    a = parse_spec(_base())
    d = _base()
    d["methods"][0]["grid"]["image_guidance_scale"].append(2.0)
    d["dataset"]["limit"] = 10
    assert parse_spec(d).fingerprint() == a.fingerprint()
    d["methods"][0]["model"] = "world:ip2p"
    assert parse_spec(d).fingerprint() != a.fingerprint()


def test_a_method_limit_runs_it_on_the_first_items_only():
    from bench.units import expand_units

    spec = parse_spec({"name": "lim", "dataset": {"kind": "world", "limit": 5},
                       "methods": [{"name": "instructpix2pix", "model": "tiny", "grid": {"image_guidance_scale": [1.0, 2.0]}},
                                   {"name": "sdedit", "model": "tiny-t2i", "limit": 2, "grid": {"strength": [0.5]}}]})
    units = expand_units([(m.key, m.settings()) for m in spec.methods], [f"i{k}" for k in range(5)], [0],
                         spec.item_limits())
    by = {}
    for u in units:
        by.setdefault(u.method, set()).add(u.item_id)
    assert by == {"instructpix2pix": {f"i{k}" for k in range(5)}, "sdedit": {"i0", "i1"}}
    assert len(units) == 5 * 2 + 2
    with pytest.raises(SpecError, match=r"methods\.1\.limit|methods\[1\]\.limit"):
        parse_spec({**spec.to_dict(), "methods": [spec.to_dict()["methods"][0], {"name": "sdedit", "limit": 0}]})
