"""Each published-benchmark suite (bench/suites/{magicbrush,emu_edit,pie_bench,editworld}.yaml) runs
end to end on its release-layout fixture with the world's InstructPix2Pix (2 steps) and produces its
per-turn or per-category tables and its official file names. Small models stand in for the real
ones by name only: world:clip for CLIP, a tiny random DINO folder, LPIPS with a random SqueezeNet
backbone file in a temporary torch cache."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from benchmark_fixtures import make_editworld, make_emu_edit, make_magicbrush_release, make_pie_bench
from test_metrics_benchmarks import make_tiny_dino_folder

from bench.spec import parse_spec
from bench.store import RunStore, load_results
from bench.sweep import run_sweep

SUITES = Path(__file__).resolve().parents[1] / "bench" / "suites"


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    import torchvision.models as tvm

    from ip2p.metrics.lpips_metric import backbone_file

    root = tmp_path_factory.mktemp("models")
    dino = make_tiny_dino_folder(root / "dino")
    # TORCH_HOME, not torch.hub.set_dir(): set_dir() pins the hub folder for the rest of the
    # worker's life (restoring it to get_dir()'s value still overrides TORCH_HOME afterwards),
    # which broke the LPIPS cache tests that ran later in the same worker.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        torch.manual_seed(0)
        path = backbone_file("squeeze")
        assert path.parent == root / "torch" / "hub" / "checkpoints"
        path.parent.mkdir(parents=True)
        torch.save(tvm.squeezenet1_1(weights=None).state_dict(), path)
        yield {"dino": str(dino)}


def _run(name: str, data: Path, out: Path, models: dict, **kw) -> pd.DataFrame:
    d = yaml.safe_load((SUITES / f"{name}.yaml").read_text())
    d["dataset"]["path"] = str(data)
    m = d["methods"][0]
    m["model"] = "world:ip2p"
    m["knobs"]["num_inference_steps"] = 2
    mt = d["metrics"]
    if "clip" in mt:
        mt["clip"].update(model="world:clip", pretrained=None)
    if "dino" in mt:
        mt["dino"]["model"] = models["dino"]
    if "structure" in mt:
        mt["structure"]["model"] = models["dino"]
    if "lpips" in mt:
        mt["lpips"]["net"] = "squeeze"  # its (random) backbone file is in the test's torch cache
    d.update(device="cpu", batch_size=4)
    spec = parse_spec(d, source=name)
    run_sweep(spec, out, progress=False, on_bad_row="skip", **kw)
    return pd.read_csv(out / "benchmark" / "tables.csv")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_magicbrush_suite_single_and_multi_turn_with_chaining_and_resume(tmp_path, small_models):
    test = make_magicbrush_release(tmp_path / "mb")
    out = tmp_path / "run"
    tables = _run("magicbrush", test, out, small_models)
    df = load_results(out)
    assert len(df) == 8  # 327726: 1, inde 2-3, iter 2-3; 242679: 1; 555555: 1, inde 3 (its turn 2 is bad)
    rows = df.set_index("item_id")
    # iterative turns start from the method's own previous output; independent ones from the truth
    assert rows.loc["327726/iter/2", "input_image"] == rows.loc["327726/1", "output_image"]
    assert rows.loc["327726/iter/3", "input_image"] == rows.loc["327726/iter/2", "output_image"]
    assert rows.loc["327726/iter/3", "chained_from"] == "327726/iter/2"
    assert rows.loc["327726/inde/2", "input_image"] != rows.loc["327726/iter/2", "input_image"]
    for col in ("target_l1", "target_l2", "target_clip_image", "target_dino", "clip_sim_1"):
        assert df[col].notna().all(), col

    per_turn = tables[(tables["view"] == "per_turn")].set_index("category")
    assert per_turn.loc["turn_1", "n_items"] == 3 and per_turn.loc["iterative/turn_3", "n_items"] == 1
    assert per_turn.loc["independent/turn_3", "n_items"] == 2
    single = tables[tables["view"] == "single_turn"].iloc[0]
    final = tables[tables["view"] == "multi_turn_final"].iloc[0]
    assert single["n_items"] == 6 and final["n_items"] == 3
    sel = df[df["item_id"].isin(["327726/1", "327726/inde/2", "327726/inde/3", "242679/1", "555555/1", "555555/inde/3"])]
    assert single["target_dino_mean"] == pytest.approx(sel["target_dino"].mean())
    fin = df[df["item_id"].isin(["327726/iter/3", "242679/1", "555555/1"])]
    assert final["target_l1_mean"] == pytest.approx(fin["target_l1"].mean())

    # the official scorer's names, one folder per setting, bytes equal to the stored outputs
    (setting,) = [p for p in (out / "benchmark" / "official").iterdir() if p.is_dir()]
    names = sorted(p.relative_to(setting).as_posix() for p in setting.rglob("*.png"))
    assert names == ["242679/242679_1.png", "327726/327726_1.png", "327726/327726_inde_2.png", "327726/327726_inde_3.png",
                     "327726/327726_iter_2.png", "327726/327726_iter_3.png", "555555/555555_1.png", "555555/555555_inde_3.png"]
    assert _sha(setting / "327726" / "327726_iter_3.png") == _sha(out / rows.loc["327726/iter/3", "output_image"])

    # resume: drop the last iterative turn's row; the rerun takes turn 2's output from the store
    before = rows.loc["327726/iter/3", "output_image"]
    store = RunStore(out)
    keep = df[df["item_id"] != "327726/iter/3"]
    for p in store.shard_files():
        p.unlink()
    store.write_shard(keep.to_dict("records"), 0, 0)
    res = run_sweep(parse_spec(yaml.safe_load((out / "spec.yaml").read_text()), source="rerun"), out, progress=False,
                    on_bad_row="skip")
    assert res.units_run == 1
    again = load_results(out).set_index("item_id")
    assert again.loc["327726/iter/3", "output_image"] == before
    assert again.loc["327726/iter/3", "input_image"] == rows.loc["327726/iter/2", "output_image"]


def test_emu_edit_suite_per_task(tmp_path, small_models):
    data = make_emu_edit(tmp_path / "emu")
    out = tmp_path / "run"
    tables = _run("emu_edit", data, out, small_models)
    cat = tables[tables["view"] == "per_category"].set_index("category")
    assert cat.loc["add", "n_items"] == 2 and cat.loc["(all)", "n_items"] == 5
    for col in ("clip_sim_direction_mean", "clip_sim_image_mean", "clip_sim_1_mean", "l1_mean", "dino_image_mean"):
        assert cat[col].notna().all(), col
    files = sorted(p.relative_to(out / "benchmark" / "official").as_posix()
                   for p in (out / "benchmark" / "official").rglob("*.png"))
    assert [f.split("/", 1)[1] for f in files] == ["test/add/0.png", "test/add/3.png", "test/background/0.png",
                                                   "test/global/2.png", "test/remove/1.png"]


def test_pie_bench_suite_per_editing_type(tmp_path, small_models):
    data = make_pie_bench(tmp_path / "pie")
    out = tmp_path / "run"
    tables = _run("pie_bench", data, out, small_models)
    df = load_results(out)
    assert len(df) == 4 and (df["height"] == 64).all()  # 512 fixture, resized by the editor; mask resized
    for col in ("structure_distance", "pie_psnr_unedit", "pie_mse_unedit", "pie_ssim_unedit", "pie_lpips_unedit",
                "pie_clip_whole", "pie_clip_edited"):
        assert df[col].notna().all() and torch.isfinite(torch.tensor(df[col].to_numpy())).all(), col
    assert (df["output_caption"].str.contains(r"\[") == False).all()  # noqa: E712 ([ ] markers stripped)
    cat = tables[tables["view"] == "per_category"].set_index("category")
    assert set(cat.index) == {"(all)", "random", "change_object", "add_object", "change_style"}
    setting = next(p for p in (out / "benchmark" / "official").iterdir() if p.is_dir())
    assert (setting / "annotation_images" / "9_change_style_80/1_artificial/1_animal/911000000002.jpg").is_file()


def test_editworld_suite_per_category_and_branch_with_missing_captions_counted(tmp_path, small_models):
    root = make_editworld(tmp_path / "ew")
    out = tmp_path / "run"
    tables = _run("editworld", root, out, small_models)
    df = load_results(out).set_index("item_id")
    assert df["clip_sim_1"].isna().sum() == 3 and df.loc["long_term/group_0/sample0", "clip_sim_1"] == df.loc["long_term/group_0/sample0", "clip_sim_1"]
    assert "clip_sim_1" in df.loc["physical_trans/group_0/sample0", "missing_metrics"].split(",")
    assert df["lpips"].notna().all()
    allrow = tables[(tables["view"] == "per_category") & (tables["category"] == "(all)")].iloc[0]
    assert allrow["n_items"] == 4 and allrow["clip_sim_1_n_missing"] == 3
    assert allrow["clip_sim_1_mean"] == pytest.approx(df.loc["long_term/group_0/sample0", "clip_sim_1"])
    branch = tables[tables["view"] == "per_branch"].set_index("category")
    assert branch.loc["video", "n_items"] == 2 and branch.loc["text-to-image", "n_items"] == 2
    assert branch.loc["video", "clip_sim_1_n_missing"] == 2


def test_iterative_turns_refuse_what_would_break_the_chain(tmp_path):
    from bench.benchmarks import turn_chain
    from ip2p.data import open_dataset
    from ip2p.errors import SpecError

    test = make_magicbrush_release(tmp_path / "mb", bad_rows=False)
    items = list(open_dataset(f"magicbrush:{test}"))
    d = yaml.safe_load((SUITES / "magicbrush.yaml").read_text())
    d["dataset"]["path"] = str(test)
    spec = parse_spec({**d, "save_images": False}, source="t")
    with pytest.raises(SpecError, match="save_images"):
        turn_chain(spec, items, RunStore(tmp_path / "run"))
    spec = parse_spec(d, source="t")
    with pytest.raises(SpecError, match="one process"):
        turn_chain(spec, items, RunStore(tmp_path / "run"), world_size=2)
    without_turn_2 = [ex for ex in items if ex.item_id != "327726/iter/2"]
    with pytest.raises(SpecError, match=r"'327726/iter/3'.*'327726/iter/2'.*whole sessions"):
        turn_chain(spec, without_turn_2, RunStore(tmp_path / "run"))
    chain = turn_chain(spec, items, RunStore(tmp_path / "run"))
    assert [chain.depth[i] for i, ex in enumerate(items) if ex.item_id.startswith("327726")] == [0, 0, 1, 0, 2]
