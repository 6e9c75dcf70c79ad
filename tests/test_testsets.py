"""Test-set readers on small fixtures written in each real format, including malformed rows."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bench.data import load_items
from bench.spec import DatasetSpec
from ip2p.data import open_dataset
from ip2p.data.testsets import decode_pie_mask, encode_pie_mask
from ip2p.errors import DataRowError


def _png(color, size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _save(path, color, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(color, size))
    return path


IMG = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# ---- Emu Edit --------------------------------------------------------------------------------

def _emu_table(rows):
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    schema = pa.schema([("instruction", pa.string()), ("image", IMG), ("task", pa.string()), ("split", pa.string()),
                        ("idx", pa.int64()), ("hash", pa.string()), ("input_caption", pa.string()),
                        ("output_caption", pa.string())])
    return pa.table(cols, schema=schema)


def _emu_rows():
    return [
        {"instruction": "make the sky red", "image": {"bytes": _png((10, 20, 200)), "path": "a.png"}, "task": "global",
         "split": "test", "idx": 7, "hash": "h7", "input_caption": "a blue sky", "output_caption": "a red sky"},
        {"instruction": "add a cat", "image": {"bytes": _png((200, 20, 10)), "path": "b.png"}, "task": "add",
         "split": "test", "idx": 9, "hash": "h9", "input_caption": "a sofa", "output_caption": "a cat on a sofa"},
        {"instruction": "remove the dog", "image": {"bytes": _png((0, 200, 0)), "path": "c.png"}, "task": "remove",
         "split": "validation", "idx": 11, "hash": "h11", "input_caption": "a dog", "output_caption": "grass"},
    ]


def test_emu_edit_reads_rows_categories_and_split(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(_emu_table(_emu_rows()[:2]), tmp_path / "data" / "test-00000-of-00001.parquet")
    pq.write_table(_emu_table(_emu_rows()[2:]), tmp_path / "data" / "validation-00000-of-00001.parquet")
    ds = open_dataset(f"emu_edit:{tmp_path}", "test")
    assert [ex.item_id for ex in ds] == ["test/global/7", "test/add/9"]  # (split, task, idx)
    assert [ex.category for ex in ds] == ["global", "add"]
    assert ds[1].instruction == "add a cat" and ds[1].output_caption == "a cat on a sofa"
    x = ds[0].load_input()
    assert x.shape == (3, 12, 16)
    assert torch.allclose(x[:, 0, 0], torch.tensor([10, 20, 200]) / 255.0)
    assert ds[0].target_image is None
    # one file holding both splits: the split column decides
    pq.write_table(_emu_table(_emu_rows()), tmp_path / "all.parquet")
    assert [ex.item_id for ex in open_dataset(f"emu_edit:{tmp_path / 'all.parquet'}", "validation")] == ["validation/remove/11"]


def test_emu_edit_malformed_row_names_row_and_field(tmp_path):
    rows = _emu_rows()
    rows[1]["instruction"] = None
    path = tmp_path / "test-0.parquet"
    pq.write_table(_emu_table(rows), path)
    with pytest.raises(DataRowError, match=r"row 1.*'instruction'"):
        open_dataset(f"emu_edit:{path}", "all")
    ds = open_dataset(f"emu_edit:{path}", "all", on_bad_row="skip")
    assert [ex.item_id for ex in ds] == ["test/global/7", "validation/remove/11"] and ds.bad_rows.counts() == {"instruction": 1}
    # a file without a required column names the column
    pq.write_table(_emu_table(_emu_rows()).drop(["task"]), path)
    with pytest.raises(DataRowError, match="'task'"):
        open_dataset(f"emu_edit:{path}", "all")


# ---- MagicBrush ------------------------------------------------------------------------------

def _mb_table(null_target_row=None):
    mask = Image.new("RGB", (16, 12), (0, 0, 0))
    mask.paste((255, 255, 255), (4, 2, 8, 6))  # white = edited region
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    rows = []
    for i, (img_id, turn) in enumerate([("327726", 1), ("327726", 2), ("242679", 1)]):
        rows.append({
            "img_id": img_id, "turn_index": turn,
            "source_img": {"bytes": _png((i * 50, 10, 10)), "path": None},
            "mask_img": {"bytes": buf.getvalue(), "path": None},
            "instruction": f"edit number {i}",
            "target_img": None if i == null_target_row else {"bytes": _png((10, i * 50, 10)), "path": None},
        })
    schema = pa.schema([("img_id", pa.string()), ("turn_index", pa.int32()), ("source_img", IMG), ("mask_img", IMG),
                        ("instruction", pa.string()), ("target_img", IMG)])
    return pa.table({k: [r[k] for r in rows] for k in rows[0]}, schema=schema)


def test_magicbrush_reads_ids_targets_and_white_masks(tmp_path):
    pq.write_table(_mb_table(), tmp_path / "dev-00000-of-00001.parquet")
    ds = open_dataset(f"magicbrush:{tmp_path}", "dev")
    assert [ex.item_id for ex in ds] == ["327726/1", "327726/2", "242679/1"]
    t = ds[2].load_target()
    assert torch.allclose(t[:, 5, 5], torch.tensor([10, 100, 10]) / 255.0)
    m = ds[0].load_mask()
    assert m.dtype == torch.bool and m.shape == (12, 16)
    assert m[2:6, 4:8].all() and m.sum() == 16


def test_magicbrush_null_target_is_named(tmp_path):
    pq.write_table(_mb_table(null_target_row=1), tmp_path / "dev-0.parquet")
    with pytest.raises(DataRowError, match=r"row 1.*'target_img'"):
        open_dataset(f"magicbrush:{tmp_path}", "all")


# ---- PIE-Bench -------------------------------------------------------------------------------

def test_pie_mask_convention_row_major_start_length_pairs():
    # rows 10..12, columns 5..9 of the 512x512 raster, written by hand as (start, length) pairs
    rle = [10 * 512 + 5, 5, 11 * 512 + 5, 5, 12 * 512 + 5, 5]
    m = decode_pie_mask(rle, border=False)
    assert m.shape == (512, 512) and m.sum() == 15
    assert m[10:13, 5:10].all()
    # a run crossing a row end continues on the next row (flat, row-major) and is clipped at the raster end
    m2 = decode_pie_mask([510, 4, 512 * 512 - 2, 10], border=False)
    assert m2[0, 510:].all() and m2[1, :2].all() and m2[-1, -2:].all() and m2.sum() == 6
    # the benchmark's evaluation marks the one-pixel border as edited
    mb = decode_pie_mask(rle)
    assert mb[0].all() and mb[-1].all() and mb[:, 0].all() and mb[:, -1].all()
    assert mb.sum() == 15 + 4 * 511
    assert encode_pie_mask(m) == rle
    with pytest.raises(ValueError, match="odd length"):
        decode_pie_mask([1, 2, 3])


def _pie_fixture(tmp_path, entries):
    root = tmp_path / "PIE-Bench_v1"
    for e in entries.values():
        _save(root / "annotation_images" / e["image_path"], (120, 30, 60), (512, 512))
    (root / "mapping_file.json").write_text(json.dumps(entries))
    return root


def _pie_entries():
    return {
        "000000000001": {"image_path": "0_random_140/000000000001.jpg", "original_prompt": "a [cat] sitting on a bench",
                         "editing_prompt": "a [dog] sitting on a bench", "editing_instruction": "Change the cat to a dog",
                         "editing_type_id": "1", "blended_word": "cat dog",
                         "mask": [100 * 512 + 100, 50, 101 * 512 + 100, 50]},
        "000000000002": {"image_path": "9_change_style_80/1_artificial/000000000002.jpg",
                         "original_prompt": "a house", "editing_prompt": "a [watercolor] house",
                         "editing_instruction": "Make it a watercolor", "editing_type_id": "9", "blended_word": "",
                         "mask": [0, 512 * 512]},
    }


def test_pie_bench_reads_entries_masks_and_categories(tmp_path):
    root = _pie_fixture(tmp_path, _pie_entries())
    items = load_items(DatasetSpec(kind="pie_bench", path=str(root)))
    assert [ex.item_id for ex in items] == ["000000000001", "000000000002"]
    a, b = items
    assert a.category == "change_object" and b.category == "change_style"
    assert a.input_caption == "a cat sitting on a bench" and a.output_caption == "a dog sitting on a bench"
    assert a.instruction == "Change the cat to a dog"
    m = a.load_mask()
    assert m[100:102, 100:150].all() and not m[100:102, 150:200].any() and not m[50, 50]
    assert b.load_mask().all()
    assert a.load_input().shape == (3, 512, 512)


def test_pie_bench_malformed_entries_name_the_field(tmp_path):
    entries = _pie_entries()
    entries["000000000002"]["mask"] = [5, 6, 7]
    root = _pie_fixture(tmp_path, entries)
    with pytest.raises(DataRowError, match=r"000000000002.*'mask'.*odd length"):
        open_dataset(f"pie_bench:{root}")
    entries = _pie_entries()
    del entries["000000000001"]["editing_instruction"]
    root = _pie_fixture(tmp_path / "b", entries)
    with pytest.raises(DataRowError, match=r"000000000001.*'editing_instruction'"):
        open_dataset(f"pie_bench:{root}")


# ---- EditWorld -------------------------------------------------------------------------------

def _editworld_fixture(tmp_path, broken=False):
    root = tmp_path / "editworld_test"
    g1 = root / "long_term" / "group_0"
    g2 = root / "spatial_trans" / "group_3"
    for g, col in ((g1, (50, 50, 50)), (g2, (90, 90, 200))):
        _save(g / "sample0_ori.png", col)
        _save(g / "sample0_tar.png", (col[0] // 2,) * 3)
    # as the generation code writes it: absolute paths from the machine that made it, the
    # instruction key spelled "instuction" and the caption "target_cation"
    (g1 / "img_txt.json").write_text(json.dumps({
        "sample0": {"instuction": "let fifty years pass", "original_caption": "a new car",
                    "target_cation": "a rusty old car",
                    "original_img_path": "/data/editworld/long_term/group_0/sample0_ori.png",
                    "target_img_path": "/data/editworld/long_term/group_0/sample0_tar.png"}}))
    entry = {"instruction": "the ball is thrown upward", "target_caption": "a ball high in the air",
             "original_img_path": "sample0_ori.png" if not broken else "missing.png"}
    (g2 / "img_txt.json").write_text(json.dumps({"sample0": entry}))
    return root


def test_editworld_reads_categories_branches_and_paths(tmp_path):
    root = _editworld_fixture(tmp_path)
    ds = open_dataset(f"editworld:{root}")
    assert [ex.item_id for ex in ds] == ["long_term/group_0/sample0", "spatial_trans/group_3/sample0"]
    a, b = ds
    assert (a.category, a.metadata["branch"]) == ("long_term", "text-to-image")
    assert (b.category, b.metadata["branch"]) == ("spatial_trans", "video")
    assert a.instruction == "let fifty years pass" and a.output_caption == "a rusty old car"
    assert a.input_caption == "a new car" and b.input_caption == ""
    assert torch.allclose(a.load_input()[:, 0, 0], torch.tensor([50, 50, 50]) / 255.0)
    assert a.load_target() is not None and b.target_image is None


def test_editworld_missing_image_is_named(tmp_path):
    root = _editworld_fixture(tmp_path, broken=True)
    with pytest.raises(DataRowError, match=r"group_3.*'original_img_path'.*missing.png"):
        open_dataset(f"editworld:{root}")


# ---- the formats shared with training: their test splits through the bench -----------------

def test_official_layout_test_split_through_bench(tmp_path):
    root = tmp_path / "ip2p-data"
    seeds = []
    for i in range(40):  # test split = last 5% of the prompt folders = the last 2
        d = f"{i:07d}"
        (root / d).mkdir(parents=True)
        (root / d / "prompt.json").write_text(json.dumps({"input": f"photo {i}", "edit": f"edit {i}", "output": f"art {i}"}))
        for s in (11, 12):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / d / f"{s}_0.jpg")
            Image.new("RGB", (8, 8), (0, i, 0)).save(root / d / f"{s}_1.jpg")
        seeds.append([d, [11, 12]])
    (root / "seeds.json").write_text(json.dumps(seeds))
    items = load_items(DatasetSpec(kind="official", path=str(root)))
    assert sorted({ex.metadata["prompt_id"] for ex in items}) == ["0000038", "0000039"]
    assert items[0].instruction == "edit 38" and items[0].output_caption == "art 38"
    (root / "0000039" / "prompt.json").write_text(json.dumps({"input": "x", "output": "y"}))
    with pytest.raises(DataRowError, match=r"0000039.*'edit'"):
        load_items(DatasetSpec(kind="official", path=str(root)))


def test_jsonl_manifest_and_hub_parquet_through_bench(tmp_path):
    for i in range(3):
        _save(tmp_path / f"in{i}.png", (i * 60, 0, 0))
        _save(tmp_path / f"out{i}.png", (0, i * 60, 0))
    lines = [{"id": f"m{i}", "input_image": f"in{i}.png", "edited_image": f"out{i}.png", "instruction": f"do {i}",
              "category": "colour", "split": "test" if i else "train"} for i in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    items = load_items(DatasetSpec(kind="jsonl", path=str(tmp_path / "m.jsonl"), split="test"))
    assert [ex.item_id for ex in items] == ["m1", "m2"] and items[0].category == "colour"
    lines[2].pop("instruction")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(DataRowError, match=r"m.jsonl:3.*'instruction'"):
        load_items(DatasetSpec(kind="jsonl", path=str(tmp_path / "m.jsonl"), split="test"))

    schema = pa.schema([("original_prompt", pa.string()), ("original_image", IMG), ("edit_prompt", pa.string()),
                        ("edited_prompt", pa.string()), ("edited_image", IMG)])
    rows = {"original_prompt": ["a", "b"], "original_image": [{"bytes": _png((1, 2, 3)), "path": None}] * 2,
            "edit_prompt": ["make it b", None], "edited_prompt": ["b", "c"],
            "edited_image": [{"bytes": _png((3, 2, 1)), "path": None}] * 2}
    pq.write_table(pa.table(rows, schema=schema), tmp_path / "test-00000.parquet")
    with pytest.raises(DataRowError, match=r"row 1.*'edit_prompt'"):
        load_items(DatasetSpec(kind="parquet", path=str(tmp_path / "test-00000.parquet")))
    items = load_items(DatasetSpec(kind="parquet", path=str(tmp_path / "test-00000.parquet"), limit=5), on_bad_row="skip")
    assert len(items) == 1 and items[0].instruction == "make it b" and items[0].load_target() is not None
