"""``ip2p ablate`` (bench.ablate) end to end on the small world, seconds-sized: pairs from world:sd,
the CLIP filter with world:clip, variants trained from world:ip2p for 2 steps, one sweep, the
figure and the table; a killed run resumes; a rerun redoes nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.ablate import load_ablation_spec, run_ablation
from ip2p.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]

HARNESS = {
    "name": "tiny-ablation-sweep",
    "dataset": {"kind": "world", "split": "test", "limit": 2},
    "methods": [{"name": "instructpix2pix", "model": "world:ip2p", "knobs": {"num_inference_steps": 2},
                 "grid": {"image_guidance_scale": [1.0, 1.5]}}],
    "metrics": {"compute": ["clip"], "clip": {"model": "world:clip", "pretrained": None}},
    "seeds": [0], "batch_size": 8, "device": "cpu",
}


def _spec(tmp_path, **over):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(HARNESS))
    spec = {
        "name": "tiny-ablation",
        "base": "world:ip2p",
        "pairs": {"model": "world:sd", "prompts": "world:triplets", "limit": 3, "n_per_prompt": 2, "steps": 2,
                  "batch_size": 4},
        "filter": {"clip": {"model": "world:clip"},
                   "thresholds": {"min_image": 0.0, "min_direction": -1.0, "min_sim_0": -1.0, "min_sim_1": -1.0,
                                  "max_per_prompt": 1}},
        "variants": [{"name": "gen-2-filtered", "source": "generated", "size": 2, "filter": True},
                     {"name": "gen-2-unfiltered", "source": "generated", "size": 2, "filter": False},
                     {"name": "world-2", "source": "world", "size": 2}],
        "train": {"max_steps": 2, "batch_size": 2, "resolution": 64, "flip": False, "progress": False},
        "sweep": "sweep.yaml",
        "include_base": True,
        "device": "cpu",
        **over,
    }
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(SpecError, match=r"train\.nonsense: not a training option"):
        load_ablation_spec(_spec(tmp_path, train={"nonsense": 1}))
    with pytest.raises(SpecError, match=r"variants\[1\]\.name: 'a' is used twice"):
        load_ablation_spec(_spec(tmp_path, variants=[{"name": "a", "size": 1}, {"name": "a", "size": 2}]))
    with pytest.raises(SpecError, match=r"filter\.thresholds"):
        load_ablation_spec(_spec(tmp_path, filter={"thresholds": {"min_everything": 1}}))
    with pytest.raises(SpecError, match=r"variants\[0\]\.name: 'ref' is used twice \(or .* a label in references\)"):
        load_ablation_spec(_spec(tmp_path, variants=[{"name": "ref", "size": 1}], references={"ref": "world:ip2p"}))
    with pytest.raises(SpecError, match=r"references\.base: 'base' labels the base model's curve"):
        load_ablation_spec(_spec(tmp_path, references={"base": "world:ip2p"}))
    assert load_ablation_spec(_spec(tmp_path, include_base=False, references={"base": "world:ip2p"}))[0].references
    spec, _ = load_ablation_spec(_spec(tmp_path, variants=[], grid={"size": [5, 50], "filter": [True, False]}))
    assert [v.name for v in spec.all_variants()] == ["gen-5-filtered", "gen-5-unfiltered", "gen-50-filtered",
                                                      "gen-50-unfiltered"]


def test_ablation_runs_resumes_after_a_kill_and_redoes_nothing(tmp_path):
    spec = _spec(tmp_path, references={"ref-ip2p": "world:ip2p"})
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "IP2P_PAIRS_KILL_AFTER": "pair:3"}
    r = subprocess.run([sys.executable, "-m", "ip2p.cli", "ablate", str(spec), "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not (out / "models").exists()

    res = run_ablation(spec, out, report=tmp_path / "report")
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == {"base", "ref-ip2p", "gen-2-filtered", "gen-2-unfiltered", "world-2"}
    assert rows["ref-ip2p"]["source"] == "(reference: world:ip2p)" and rows["base"]["source"] == "(base model)"
    for r in rows.values():
        assert -1 <= r["clip_sim_direction"] <= 1 and -1 <= r["clip_sim_image"] <= 1 and r["points"] == 2
    # the variants' data: filter on = at most one pair per prompt (max_per_prompt 1), read by the official reader
    from ip2p.data import open_dataset

    filtered = open_dataset(f"official:{out / 'data' / 'gen-2-filtered'}", "all")
    assert len(filtered) == 2 and len({ex.metadata["prompt_id"] for ex in filtered}) == 2
    assert len(open_dataset(f"official:{out / 'data' / 'gen-2-unfiltered'}", "all")) == 2
    pool_rows = sum(1 for f in (out / "pool").glob("*/metadata.jsonl") for _ in f.read_text().splitlines())
    assert pool_rows == 6  # the killed pool was completed without duplicates
    assert [r["question"] for r in res["paired"]] == ["no filter vs filter, 2 pairs"]
    for name in ("ablation.png", "ablation.pdf", "ablation_table.md", "ablation_paired.md", "timings.json",
                 "filter_table.md", "spec.yaml", "sweep_spec.yaml", "sweep_manifest.json", "pool_generation.json",
                 "edits.png"):
        assert (tmp_path / "report" / name).is_file(), name
    for v in ("gen-2-filtered", "gen-2-unfiltered", "world-2"):
        assert (out / "models" / v / "unet" / "config.json").is_file()
        assert json.loads((out / "models" / v / "unet" / "config.json").read_text())["in_channels"] == 8

    # a rerun builds, trains and evaluates nothing
    timings = json.loads((out / "timings.json").read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*.safetensors")}
    again = run_ablation(spec, out)
    assert json.loads((out / "timings.json").read_text()) == timings
    assert {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*.safetensors")} == mtimes
    assert again["rows"] == res["rows"]

    # changing a variant's recipe is refused, not mixed in
    spec2 = _spec(tmp_path, references={"ref-ip2p": "world:ip2p"}, train={"max_steps": 3, "batch_size": 2, "resolution": 64, "flip": False, "progress": False})
    with pytest.raises(SpecError, match="trained with other settings"):
        run_ablation(spec2, out)


def test_reference_models_are_swept_beside_the_variants_and_the_base_left_out(tmp_path):
    # an ablation trained from a text-to-image base (world:sd) cannot sweep its base as an editor; the
    # shipped editor is a reference curve under its own label instead
    from bench.ablate import sweep_spec

    spec, base_dir = load_ablation_spec(_spec(tmp_path, base="world:sd", include_base=False,
                                              references={"world-ip2p": "world:ip2p"}))
    models = {v.name: tmp_path / "models" / v.name for v in spec.all_variants()}
    methods = sweep_spec(spec, base_dir, models)["methods"]
    assert [(m["label"], m["model"]) for m in methods] == [("world-ip2p", "world:ip2p")] + [
        (name, str(path)) for name, path in models.items()]
    assert all(m["name"] == "instructpix2pix" and m["grid"] == {"image_guidance_scale": [1.0, 1.5]} for m in methods)
    with_base, _ = load_ablation_spec(_spec(tmp_path, references={"world-ip2p": "world:ip2p"}))
    assert [m["label"] for m in sweep_spec(with_base, base_dir, models)["methods"]][:2] == ["base", "world-ip2p"]


def test_a_variant_larger_than_the_pool_is_a_clear_error(tmp_path):
    spec = _spec(tmp_path, pairs={"model": "world:sd", "limit": 2, "n_per_prompt": 1, "steps": 1},
                 variants=[{"name": "gen-5", "source": "generated", "size": 5, "filter": False}])
    with pytest.raises(SpecError, match=r"variants 'gen-5': size 5 but the pool has only 2 generated pairs"):
        run_ablation(spec, tmp_path / "run")


def test_paired_differences_pair_items_and_settings(tmp_path):
    import pandas as pd

    from bench.ablate.tables import _write_paired

    from bench.ablate import VariantSpec, comparisons, paired_differences

    rows = []
    for item in range(5):
        for setting in range(3):
            base = 0.1 * item + 0.01 * setting
            rows.append({"method": "small", "item_id": f"i{item}", "seed": 0, "setting_index": setting,
                         "clip_sim_direction": base, "clip_sim_image": base, "edit_success": 0.0})
            rows.append({"method": "large", "item_id": f"i{item}", "seed": 0, "setting_index": setting,
                         "clip_sim_direction": base + 0.05, "clip_sim_image": base - 0.02 * (item % 2),
                         "edit_success": float(item % 2 == 0)})
    out = paired_differences(pd.DataFrame(rows), [("q", "large", "small")])[0]
    assert out["clip_sim_direction"] == "+0.0500 [+0.0500, +0.0500]"  # item spread cancels in a paired difference
    assert out["clip_sim_image"].startswith("-0.0080 [")
    assert out["edit_success"].startswith("+0.6000 [") and "target_l1" not in out  # a metric not computed is left out
    _write_paired([out], tmp_path, 5)
    head, _, row = (tmp_path / "ablation_paired.md").read_text().splitlines()[:3]
    assert head == "| question | a | b | clip_sim_direction a - b | clip_sim_image a - b | edit_success a - b |"
    assert row.endswith(f"| {out['edit_success']} |")
    vs = [VariantSpec(name=f"g{s}{f}", size=s, filter=f) for s in (5, 50) for f in (True, False)]
    assert [q for q, _, _ in comparisons(vs)] == ["no filter vs filter, 5 pairs", "no filter vs filter, 50 pairs",
                                                   "50 vs 5 pairs, filter on", "50 vs 5 pairs, filter off"]
