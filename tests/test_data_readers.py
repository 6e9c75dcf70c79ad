"""Dataset readers on small fixtures written in their real formats, bad rows included."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p.data import open_dataset
from ip2p.data.filtering import ClipFilter
from ip2p.data.rows import select_subset
from ip2p.errors import DataRowError


def _img(seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth blocks survive JPEG well enough to compare colours
    arr = np.kron(rng.integers(0, 256, (size // 4, size // 4, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    return Image.fromarray(arr)


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    _img(seed).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ---------------------------------------------------------------- official layout

def write_official(root, n_dirs=20, seeds_per_dir=3):
    seeds = []
    for d in range(n_dirs):
        name = f"{d:07d}"
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "prompt.json").write_text(json.dumps({"input": f"photo {d}", "edit": f"edit {d}", "output": f"photo {d} edited"}))
        ss = [100 * d + k for k in range(seeds_per_dir)]
        meta = []
        for k, s in enumerate(ss):
            (folder / f"{s}_0.jpg").write_bytes(_jpeg_bytes(2 * s))
            (folder / f"{s}_1.jpg").write_bytes(_jpeg_bytes(2 * s + 1))
            meta.append({"seed": s, "p2p_threshold": 0.5, "cfg_scale": 9.0, "clip_sim_0": 0.3, "clip_sim_1": 0.3,
                         "clip_sim_dir": 0.25 + 0.01 * k, "clip_sim_image": 0.8})
        (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
        seeds.append([name, ss])
    (root / "seeds.json").write_text(json.dumps(seeds))
    return seeds


def test_official_splits_follow_seeds_json_order(tmp_path):
    seeds = write_official(tmp_path, n_dirs=20, seeds_per_dir=2)
    tr = open_dataset(tmp_path, split="train")
    va = open_dataset(f"official:{tmp_path}", split="val")
    te = open_dataset(tmp_path, split="test")
    assert [e.item_id for e in tr] == [f"{d}/{s}" for d, ss in seeds[:18] for s in ss]
    assert [e.item_id for e in va] == [f"{d}/{s}" for d, ss in seeds[18:19] for s in ss]
    assert [e.item_id for e in te] == [f"{d}/{s}" for d, ss in seeds[19:] for s in ss]
    ex = te[1]
    assert (ex.instruction, ex.input_caption, ex.output_caption) == ("edit 19", "photo 19", "photo 19 edited")
    assert ex.metadata["clip_sim_dir"] == pytest.approx(0.26) and ex.metadata["prompt_id"] == "0000019"
    ref = torch.from_numpy(np.asarray(Image.open(tmp_path / "0000019" / "1901_1.jpg").convert("RGB")).copy())
    assert torch.equal((ex.load_target() * 255).round().to(torch.uint8).permute(1, 2, 0), ref)
    with pytest.raises(DataRowError, match="no split 'dev'"):
        open_dataset(tmp_path, split="dev")


def test_official_bad_rows_raise_or_skip(tmp_path, caplog):
    write_official(tmp_path, n_dirs=4, seeds_per_dir=2)
    (tmp_path / "0000001" / "101_1.jpg").unlink()  # missing file
    (tmp_path / "0000002" / "200_0.jpg").write_bytes(b"not a jpeg")  # undecodable
    (tmp_path / "0000003" / "prompt.json").write_text(json.dumps({"input": "a", "edit": "  ", "output": "b"}))  # empty edit
    with pytest.raises(DataRowError) as e:
        open_dataset(tmp_path, split="all")
    assert "0000001" in str(e.value) and "target_image" in str(e.value) and "101_1.jpg" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="ip2p.data"):
        ds = open_dataset(tmp_path, split="all", on_bad_row="skip")
    assert sorted(e.item_id for e in ds) == ["0000000/0", "0000000/1", "0000001/100", "0000002/201"]
    assert ds.bad_rows.counts() == {"edit": 1, "input_image": 1, "target_image": 1}
    assert any("200_0.jpg" in r.message() for r in ds.bad_rows.rows)
    assert "skipped 3 bad row(s)" in ds.describe() and "skipped 3" in caplog.text
    # without verification the undecodable image is found only when loaded, and named then
    lazy = open_dataset(tmp_path, split="all", on_bad_row="skip", verify_images=False)
    bad = next(e for e in lazy if e.item_id == "0000002/200")
    with pytest.raises(Exception, match="200_0.jpg"):
        bad.load_input()


def test_clip_filter_thresholds_and_max_per_prompt(tmp_path):
    write_official(tmp_path, n_dirs=2, seeds_per_dir=6)
    # prompt 0: make seed 3 fail the image threshold and seed 4 fail sim_1
    meta = [json.loads(x) for x in (tmp_path / "0000000" / "metadata.jsonl").read_text().splitlines()]
    meta[3]["clip_sim_image"] = 0.74
    meta[4]["clip_sim_1"] = 0.1
    (tmp_path / "0000000" / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta))
    ds = open_dataset(tmp_path, split="all", clip_filter=True)
    # best 4 by directional similarity (seed index k has 0.25 + 0.01 k), among those passing
    assert [e.item_id for e in ds] == ["0000000/0", "0000000/1", "0000000/2", "0000000/5",
                                       "0000001/102", "0000001/103", "0000001/104", "0000001/105"]
    loose = open_dataset(tmp_path, split="all", clip_filter=ClipFilter(min_image=0.7, max_per_prompt=None))
    assert len(loose) == 11
    strict = open_dataset(tmp_path, split="all", clip_filter={"min_direction": 0.295})
    assert [e.item_id for e in strict] == ["0000000/5", "0000001/105"]
    # a row without the similarity a threshold needs is a bad row named by its field
    (tmp_path / "0000001" / "metadata.jsonl").write_text("")
    with pytest.raises(DataRowError, match=r"0000001 \(seed 100\): field .metadata.clip_sim_0"):
        open_dataset(tmp_path, split="all", clip_filter=True)


def test_subset_count_and_fraction_are_deterministic_and_growth_stable(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    write_official(small, n_dirs=10, seeds_per_dir=3)
    write_official(big, n_dirs=30, seeds_per_dir=3)
    a = [e.item_id for e in open_dataset(small, split="all", subset=0.5, subset_seed=3)]
    b = [e.item_id for e in open_dataset(big, split="all", subset="50%", subset_seed=3)]
    assert 5 <= len(a) <= 25 and set(a) == {i for i in b if i in {e.item_id for e in open_dataset(small, split="all")}}
    k = [e.item_id for e in open_dataset(small, split="all", subset=7, subset_seed=3)]
    k2 = [e.item_id for e in open_dataset(small, split="all", subset=7, subset_seed=3)]
    other = [e.item_id for e in open_dataset(small, split="all", subset=7, subset_seed=4)]
    assert len(k) == 7 and k == k2 and k != other
    grown = {e.item_id for e in open_dataset(big, split="all", subset=7, subset_seed=3)}
    old = {e.item_id for e in open_dataset(small, split="all")}
    assert (grown & old) <= set(k)  # growth only displaces old items by new ones
    assert [e.item_id for e in select_subset(open_dataset(small, split="all"), 7, seed=3)] == k


# ---------------------------------------------------------------- parquet

def write_parquet(path, n=6, bad_bytes_row=None, empty_edit_row=None, null_image_row=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {c: [] for c in ("original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image", "clip_sim_dir")}
    for i in range(n):
        rows["original_prompt"].append(f"a cat {i}")
        rows["edit_prompt"].append("" if i == empty_edit_row else f"make cat {i} red")
        rows["edited_prompt"].append(f"a red cat {i}")
        rows["original_image"].append(None if i == null_image_row else {"bytes": _jpeg_bytes(10 * i), "path": f"{i}_0.jpg"})
        rows["edited_image"].append({"bytes": b"garbage" if i == bad_bytes_row else _jpeg_bytes(10 * i + 1), "path": None})
        rows["clip_sim_dir"].append(0.2 + i / 100)
    img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({k: pa.array(v, type=img_t) if k.endswith("_image") else v for k, v in rows.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=4)


def test_parquet_reader_reads_hub_columns(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", n=6)
    ds = open_dataset(tmp_path / "data")  # detected from the folder
    assert ds.name.startswith("parquet:") and len(ds) == 6
    ex = ds[5]  # second row group
    assert (ex.instruction, ex.input_caption, ex.output_caption) == ("make cat 5 red", "a cat 5", "a red cat 5")
    assert ex.item_id == "train-00000-of-00001/5" and ex.metadata["clip_sim_dir"] == pytest.approx(0.25)
    ref = torch.from_numpy(np.asarray(Image.open(io.BytesIO(_jpeg_bytes(51))).convert("RGB")).copy())
    assert torch.equal((ex.load_target() * 255).round().to(torch.uint8).permute(1, 2, 0), ref)
    assert len(open_dataset(f"parquet:{tmp_path / 'data'}", split="train")) == 6
    with pytest.raises(DataRowError, match="split 'test'"):
        open_dataset(f"parquet:{tmp_path / 'data'}", split="test")


def test_parquet_bad_rows(tmp_path):
    f = tmp_path / "d.parquet"
    write_parquet(f, n=7, bad_bytes_row=2, empty_edit_row=4, null_image_row=6)
    with pytest.raises(DataRowError) as e:
        open_dataset(f)
    assert "row 4" in str(e.value) and "edit_prompt" in str(e.value)
    ds = open_dataset(f, on_bad_row="skip")
    assert [e.item_id for e in ds] == ["d/0", "d/1", "d/3", "d/5"]
    assert ds.bad_rows.counts() == {"edit_prompt": 1, "input_image": 1, "target_image": 1}
    assert any("row 2" in r.message() and "edited_image" in r.message() for r in ds.bad_rows.rows)
    assert any("row 6" in r.message() and "original_image" in r.message() and "null" in r.message() for r in ds.bad_rows.rows)


# ---------------------------------------------------------------- jsonl manifest

def test_jsonl_manifest_relative_paths_mask_and_bad_rows(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        _img(i).save(imgs / f"{i}.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 2:6] = 255
    Image.fromarray(mask).save(imgs / "m.png")
    rows = [
        {"id": "a", "input_image": "imgs/0.png", "edited_image": "imgs/1.png", "instruction": "add a hat",
         "input_caption": "x", "output_caption": "y", "category": "add", "mask": "imgs/m.png", "split": "test", "extra": 3},
        {"input_image": "imgs/2.png", "edited_image": "imgs/3.png", "instruction": "remove it", "split": "train"},
        {"input_image": "imgs/missing.png", "edited_image": "imgs/3.png", "instruction": "x", "split": "train"},
        {"input_image": "imgs/2.png", "edited_image": "imgs/3.png", "split": "train"},
    ]
    manifest = tmp_path / "sub" / "m.jsonl"
    manifest.parent.mkdir()
    for r in rows:  # paths are relative to the manifest's folder
        for k in ("input_image", "edited_image", "mask"):
            if k in r:
                r[k] = "../" + r[k]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataRowError) as e:
        open_dataset(manifest)
    assert "m.jsonl:3" in str(e.value) and "input_image" in str(e.value) and "missing.png" in str(e.value)
    ds = open_dataset(manifest, on_bad_row="skip")
    assert [e.item_id for e in ds] == ["a", "line2"]
    assert ds.bad_rows.counts() == {"input_image": 1, "instruction": 1}
    assert any("m.jsonl:4" in r.message() and "'instruction'" in r.message() for r in ds.bad_rows.rows)
    a = ds[0]
    assert a.category == "add" and a.metadata == {"split": "test", "extra": 3}
    m = a.load_mask()
    assert m.dtype == torch.bool and m.sum() == 16 and m[4:8, 2:6].all()
    test = open_dataset(f"jsonl:{manifest}", split="test")
    assert [e.item_id for e in test] == ["a"]


# ---------------------------------------------------------------- the world

def test_world_adapter_matches_generator_and_is_lazy():
    from ip2p.data.world.examples import world_examples

    ds = open_dataset("world:val", n=6, categories="add,remove")
    ref = list(world_examples("val", n=6, seed=0, categories=["add", "remove"]))
    assert ds.split == "val" and [e.item_id for e in ds] == [e.item_id for e in ref]
    for got, want in zip(ds, ref):
        assert callable(got.input_image)  # regenerated on demand
        assert got.instruction == want.instruction and got.category == want.category
        assert torch.equal(got.load_input(), want.input_image) and torch.equal(got.load_target(), want.target_image)
        assert torch.equal(got.load_mask(), want.mask)
    with pytest.raises(DataRowError, match="split"):
        open_dataset("world:test", split="train", n=2)


def test_world_adapter_passes_night_p_to_its_lazy_images():
    from ip2p.data.world.examples import world_examples

    ds = list(open_dataset("world:train", n=40, night_p=0.5))
    ref = list(world_examples("train", n=40, night_p=0.5))
    assert sum(e.metadata["input_scene"]["night"] for e in ref) > 10
    for got, want in zip(ds, ref):
        assert got.metadata["input_scene"] == want.metadata["input_scene"]
        assert torch.equal(got.load_input(), want.input_image) and torch.equal(got.load_target(), want.target_image)
    for bad in ("often", 2.0):
        with pytest.raises(DataRowError, match="night_p"):
            list(open_dataset("world:train", n=2, night_p=bad))


def test_unknown_kind_and_path_errors(tmp_path):
    with pytest.raises(DataRowError, match="unknown dataset kind 'nope'"):
        open_dataset("nope:x")
    with pytest.raises(DataRowError, match="not found"):
        open_dataset(tmp_path / "absent")
