"""Published benchmarks are scored as their authors' code scores them by default
(``dataset.options.scoring: authors``; ``ours`` keeps this project's way), on fixtures laid out from
the authors' evaluation code: MagicBrush ``evaluation/image_eval.py`` (L1/L2 after resizing the
generated image to the ground truth's size with PIL's default bicubic, stretched), PnPInversion
``evaluation/evaluate.py`` (prompts lose only their brackets; the mask's one-pixel border is
edited), plain PIL ``.convert("RGB")`` reads (alpha dropped, EXIF ignored); and a bare folder of
Emu Edit's Hub parquet shards is Emu Edit."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.spec import parse_spec
from bench.store import load_results
from bench.benchmarks.magicbrush import authors_target_pixels as _authors_target_pixels
from bench.rows import _fit_mask
from bench.sweep import run_sweep
from ip2p.data import open_dataset
from ip2p.data.registry import resolve_spec
from ip2p.data.testsets import decode_pie_mask, encode_pie_mask

sys.path.insert(0, os.path.dirname(__file__))
from benchmark_fixtures import make_emu_edit, make_magicbrush_release, make_pie_bench, scene  # noqa: E402


def _to_tensor(img: Image.Image) -> torch.Tensor:  # torchvision's ToTensor on an RGB image
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_a_bare_folder_of_emu_edit_shards_is_emu_edit(tmp_path):
    data = make_emu_edit(tmp_path, bad_rows=False)
    (data / "test-00000-of-00001.parquet").rename(data / "test-00000-of-00002.parquet")
    import shutil

    shutil.copy(data / "test-00000-of-00002.parquet", data / "test-00001-of-00002.parquet")
    kind, _ = resolve_spec(str(data))
    assert kind.name == "emu_edit"
    assert resolve_spec(str(data / "test-00000-of-00002.parquet"))[0].name == "emu_edit"


def test_magicbrush_l1_l2_resize_the_edit_to_the_ground_truth_with_pil_defaults():
    gen = torch.from_numpy(np.asarray(scene(1, (64, 64)), dtype=np.float32) / 255).permute(2, 0, 1)
    gt_img = scene(2, (96, 80))
    got = _authors_target_pixels(gen, _to_tensor(gt_img))
    # image_eval.py: gen_img.resize(gt_img.size) (PIL's default filter), ToTensor, L1Loss / MSELoss
    from ip2p.util.io import tensor_to_pil

    g = _to_tensor(tensor_to_pil(gen).resize(gt_img.size))
    t = _to_tensor(gt_img)
    assert got["target_l1"] == pytest.approx(float((g - t).abs().mean()), abs=1e-7)
    assert got["target_l2"] == pytest.approx(float(((g - t) ** 2).mean()), abs=1e-7)


@pytest.fixture(scope="module")
def magicbrush_96(tmp_path_factory):
    """The release fixture with every ground-truth output at 96x96 (the tiny editor writes 64x64)."""
    root = tmp_path_factory.mktemp("mb")
    test = make_magicbrush_release(root, bad_rows=False)
    for p in test.rglob("*-output*.png"):
        Image.open(p).convert("RGB").resize((96, 96)).save(p)
    return test


def _mb_spec(data, scoring=None):
    options = {"turn_mode": "independent"}
    if scoring:
        options["scoring"] = scoring
    return parse_spec({"name": "mb", "dataset": {"kind": "magicbrush", "path": str(data), "options": options},
                       "methods": [{"name": "instructpix2pix", "model": "tiny", "knobs": {"num_inference_steps": 2}}],
                       "metrics": {"compute": ["pixel", "target"]}, "seeds": [0], "batch_size": 4, "device": "cpu"})


def test_magicbrush_sweep_scores_l1_as_image_eval(tmp_path, magicbrush_96):
    run_sweep(_mb_spec(magicbrush_96), tmp_path / "a", progress=False)
    df = load_results(tmp_path / "a")
    r = df.iloc[0]
    gen = Image.open(tmp_path / "a" / r["output_image"]).convert("RGB")
    img_id, _, turn = r["item_id"].partition("/")
    turn = turn.rsplit("/", 1)[-1]
    gt = Image.open(magicbrush_96 / "images" / img_id / f"{img_id}-output{turn}.png").convert("RGB")
    assert gen.size == (64, 64) and gt.size == (96, 96)
    g, t = _to_tensor(gen.resize(gt.size)), _to_tensor(gt)
    assert r["target_l1"] == pytest.approx(float((g - t).abs().mean()), abs=1e-6)
    assert r["target_l2"] == pytest.approx(float(((g - t) ** 2).mean()), abs=1e-6)
    run_sweep(_mb_spec(magicbrush_96, "ours"), tmp_path / "b", progress=False)
    ours = load_results(tmp_path / "b")
    assert ours.iloc[0]["target_l1"] != pytest.approx(r["target_l1"], abs=1e-6)  # the target fitted to the edit


def test_pie_prompts_lose_only_their_brackets(tmp_path):
    root = make_pie_bench(tmp_path / "pie", bad_rows=False)
    mapping = json.loads((root / "mapping_file.json").read_text())
    mapping["000000000000"]["original_prompt"] = "a  [cat] sitting [ ]on grass"
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    ex = {e.item_id: e for e in open_dataset(f"pie_bench:{root}")}["000000000000"]
    assert ex.input_caption == "a  cat sitting  on grass"  # evaluate.py: .replace("[", "").replace("]", "")
    ours = {e.item_id: e for e in open_dataset(f"pie_bench:{root}", scoring="ours")}["000000000000"]
    assert ours.input_caption == "a cat sitting on grass"


def test_pie_mask_border_survives_a_resize():
    rle = encode_pie_mask(np.pad(np.ones((100, 100), bool), ((200, 212), (200, 212))))
    m = decode_pie_mask(rle)  # at 512, with evaluate.py's border
    assert m[511].all() and m[:, 511].all()
    plain = _fit_mask(m, (64, 64))
    assert not plain[63].all()  # a nearest resize alone drops row 511 (the bug)
    kept = _fit_mask(m, (64, 64), border=True)
    assert kept[0].all() and kept[63].all() and kept[:, 0].all() and kept[:, 63].all()
    assert torch.equal(kept[1:-1, 1:-1], plain[1:-1, 1:-1])


def test_pie_reader_marks_the_border_for_the_sweep(tmp_path):
    root = make_pie_bench(tmp_path / "pie", bad_rows=False)
    assert all(e.metadata["mask_border"] for e in open_dataset(f"pie_bench:{root}"))
    assert not any(e.metadata["mask_border"] for e in open_dataset(f"pie_bench:{root}", scoring="ours"))


def test_benchmark_images_are_read_as_the_authors_read_them(tmp_path):
    """RGBA with transparent pixels and an EXIF rotation: plain PIL keeps the stored colour and the
    stored orientation; our reader composites over white and turns the photo upright."""
    root = make_pie_bench(tmp_path / "pie", bad_rows=False)
    mapping = json.loads((root / "mapping_file.json").read_text())
    rel = mapping["000000000000"]["image_path"].replace(".jpg", ".png")
    rgba = np.zeros((64, 48, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # red, fully transparent
    img = Image.fromarray(rgba, "RGBA")
    exif = img.getexif()
    exif[274] = 6  # rotate 90 degrees on display
    img.save(root / "annotation_images" / rel, exif=exif)
    mapping["000000000000"]["image_path"] = rel
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    authors = {e.item_id: e for e in open_dataset(f"pie_bench:{root}")}["000000000000"].load_input()
    ours = {e.item_id: e for e in open_dataset(f"pie_bench:{root}", scoring="ours")}["000000000000"].load_input()
    expected = _to_tensor(Image.open(root / "annotation_images" / rel).convert("RGB"))
    assert torch.equal(authors, expected) and authors.shape == (3, 64, 48) and authors[0].max() > 0.7
    assert ours.shape == (3, 48, 64) and ours.min() == 1.0  # upright, transparent over white


def test_an_unknown_scoring_option_is_refused(tmp_path):
    from ip2p.errors import DataRowError

    root = make_pie_bench(tmp_path / "pie", bad_rows=False)
    with pytest.raises(DataRowError, match="scoring: 'theirs'"):
        open_dataset(f"pie_bench:{root}", scoring="theirs")
