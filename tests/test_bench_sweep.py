"""The sweep engine on a real tiny model: completeness, pairing, provenance, skipping stored
units, growing a grid, refusing a folder of another experiment."""
from __future__ import annotations

import json

import pytest

from bench.spec import parse_spec
from bench.store import RunStore, load_results
from bench.sweep import run_sweep
from bench.testing import assert_same_rows, random_clip_folder, tiny_spec
from ip2p.errors import SpecError

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return random_clip_folder(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip_dir):
    run = tmp_path_factory.mktemp("ref") / "run"
    res = run_sweep(parse_spec(tiny_spec(clip_dir)), run, progress=False)
    return run, load_results(run), res


def test_reference_run_is_complete_paired_and_explains_itself(reference, clip_dir):
    run, df, res = reference
    assert (res.units_total, res.units_run, res.units_skipped) == (12, 12, 0)
    assert len(df) == 12 and df["unit_key"].is_unique
    assert df.groupby("item_id")["knobs"].nunique().tolist() == [4, 4, 4]
    assert set(df["seed"]) == {0}  # paired: every setting sees the same items and the same seed
    # the knobs reach the model: the four settings of an item give four different images
    assert df.groupby("item_id")["output_image"].nunique().tolist() == [4, 4, 4]
    for rel in df["output_image"]:
        assert (run / rel).is_file()
    for col in ("clip_sim_direction", "clip_sim_image", "l1", "psnr", "target_l1", "masked_l1_outside"):
        assert df[col].notna().all(), col
    assert df["clip_sim_image"].between(-1, 1).all()
    spec_rec = json.loads(df["metric_spec"].iloc[0])
    assert spec_rec["clip"]["backbone"] == str(clip_dir) and len(spec_rec["clip"]["weights_hash"]) >= 8
    ident = json.loads(df["model_identity"].iloc[0])
    assert df["model_hash"].iloc[0] == ident["weights_hash"]
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == {**man["status"], "state": "complete", "rows": 12, "units_missing": 0}
    import torch

    assert man["packages"]["torch"] == torch.__version__.split("+")[0] or man["packages"]["torch"] == torch.__version__
    assert man["git"]["commit"] and man["spec"]["name"] == "tiny" and man["hardware"]["cpu_count"]
    assert len(list((run / "cache").glob("*.sqlite"))) == 1  # embeddings cached on disk


def test_rerun_skips_stored_units_and_adds_nothing(reference, clip_dir):
    run, df, _ = reference
    n_shards = len(RunStore(run).shard_files())
    res = run_sweep(parse_spec(tiny_spec(clip_dir)), run, progress=False)
    assert (res.units_run, res.units_skipped, res.shards_written) == (0, 12, 0)
    assert len(RunStore(run).shard_files()) == n_shards
    assert_same_rows(load_results(run), df)


def test_growing_the_grid_runs_only_new_units_and_other_specs_are_refused(reference, tmp_path, clip_dir):
    run, ref, _ = reference
    import shutil

    grown = tmp_path / "run"
    shutil.copytree(run, grown)
    spec = tiny_spec(clip_dir)
    spec["methods"][0]["grid"]["image_guidance_scale"].append(2.0)
    res = run_sweep(parse_spec(spec), grown, progress=False)
    assert (res.units_skipped, res.units_run) == (12, 6)
    df = load_results(grown)
    assert len(df) == 18
    assert_same_rows(df[df["unit_key"].isin(ref["unit_key"])], ref)
    other = tiny_spec(None)  # different metrics: rows would not be comparable
    with pytest.raises(SpecError, match="different experiment"):
        run_sweep(parse_spec(other), grown, progress=False)


def test_results_of_other_weights_are_not_extended(tmp_path, clip_dir):
    """A model folder retrained in place: its old rows and new ones must not mix in one run folder."""
    from tests.editor_fixtures import tiny_pipe

    folder = tmp_path / "model"
    tiny_pipe(seed=0).save_pretrained(str(folder))
    spec = tiny_spec(clip_dir)
    spec["methods"][0]["model"] = str(folder)
    run = tmp_path / "run"
    assert run_sweep(parse_spec(spec), run, progress=False).units_run == 12
    assert run_sweep(parse_spec(spec), run, progress=False).units_run == 0  # same weights: reused
    tiny_pipe(seed=1).save_pretrained(str(folder))  # other weights, same folder name
    from bench.editors import clear_editor_cache

    clear_editor_cache()
    with pytest.raises(SpecError, match="weights"):
        run_sweep(parse_spec(spec), run, progress=False)
    assert len(load_results(run)) == 12  # nothing stored is lost
