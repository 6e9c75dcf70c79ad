"""Readers of the published benchmarks' release layouts, on fixtures laid out as released, bad rows
included: MagicBrush's test zip / folder (per-turn items), Emu Edit keyed by (split, task, idx),
EditWorld without output captions, and the official InstructPix2Pix layout as its writers write it."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch
from benchmark_fixtures import make_editworld, make_emu_edit, make_magicbrush_release, scene, save

from ip2p.data import open_dataset
from ip2p.errors import DataRowError


def test_magicbrush_release_folder_per_turn_items_captions_and_bad_rows(tmp_path):
    test = make_magicbrush_release(tmp_path)
    with pytest.raises(DataRowError, match=r"session '555555' turn 2: field 'instruction'"):
        open_dataset(f"magicbrush:{test}")
    ds = open_dataset(str(tmp_path / "test"), on_bad_row="skip")  # the folder is detected as MagicBrush
    ids = [ex.item_id for ex in ds]
    assert ids == ["327726/1", "327726/inde/2", "327726/iter/2", "327726/inde/3", "327726/iter/3",
                   "242679/1", "555555/1", "555555/inde/3"]
    # bad rows named: the bad turn, the iterative turns it breaks, the session without files
    fields = sorted((r.source.split("session ")[1], r.field) for r in ds.bad_rows.rows)
    assert fields == [("'555555' turn 2", "instruction"), ("'555555' turn 3", "input"), ("'999999' turn 1", "input")]
    by = {ex.item_id: ex for ex in ds}
    t2i, t2c = by["327726/inde/2"], by["327726/iter/2"]
    assert t2i.category == "independent/turn_2" and t2c.category == "iterative/turn_2"
    assert t2c.metadata["chain_from"] == "327726/1" and by["327726/iter/3"].metadata["chain_from"] == "327726/iter/2"
    assert t2i.metadata["official_name"] == "327726_inde_2.png" and by["327726/1"].metadata["official_name"] == "327726_1.png"
    # turn 2 starts from the ground-truth output of turn 1; its target is output2; white mask = edited
    assert torch.equal(t2i.load_input(), by["327726/1"].load_target())
    assert t2i.load_target().shape == (3, 64, 64)
    m = t2i.load_mask()
    assert m.dtype == torch.bool and m[10, 10] and not m[60, 60]
    # global captions by default: the input's from the global file too
    assert by["327726/1"].input_caption == "a photo number 0" and t2i.output_caption == "a photo number 0 after change 2"
    local = {ex.item_id: ex for ex in open_dataset(f"magicbrush:{test}", on_bad_row="skip", captions="local")}
    assert local["327726/1"].output_caption == "change 1"
    assert local["327726/inde/2"].output_caption == "" and local["327726/inde/2"].metadata["missing_text"] == "output_caption"
    # one mode only
    inde = open_dataset(f"magicbrush:{test}", on_bad_row="skip", turn_mode="independent")
    assert not any("/iter/" in ex.item_id for ex in inde)
    with pytest.raises(DataRowError, match="turn_mode"):
        open_dataset(f"magicbrush:{test}", on_bad_row="skip", turn_mode="sideways")


def test_magicbrush_release_zip_with_its_password(tmp_path):
    z = make_magicbrush_release(tmp_path, zipped=True)
    ds = open_dataset(f"magicbrush:{z}", on_bad_row="skip")
    assert len(ds) == 8 and ds[1].load_input().shape == (3, 64, 64)
    assert str(z) in ds[0].source or "edit_sessions.json" in ds[0].source
    with pytest.raises(DataRowError, match="zip_password"):
        open_dataset(f"magicbrush:{z}", on_bad_row="skip", zip_password="wrong")
    # ZipCrypto checks one byte of the password: 1 wrong password in 256 passes it and then fails to
    # inflate (zlib.error) or its CRC. Find such a password for this zip; it too must be named.
    with zipfile.ZipFile(z) as zf:
        member = next(n for n in zf.namelist() if n.endswith("edit_sessions.json"))
        lucky = None
        for k in range(20000):
            try:
                with zf.open(member, pwd=f"wrong{k}".encode()):
                    lucky = f"wrong{k}"
                    break
            except RuntimeError:
                continue
    assert lucky is not None
    with pytest.raises(DataRowError, match="zip_password"):
        open_dataset(f"magicbrush:{z}", on_bad_row="skip", zip_password=lucky)


def test_emu_edit_rows_keyed_by_split_task_idx(tmp_path):
    data = make_emu_edit(tmp_path)
    with pytest.raises(DataRowError, match=r"row 5: field 'idx'.*test/background/0"):
        open_dataset(f"emu_edit:{data}", "test")
    ds = open_dataset(f"emu_edit:{data}", "test", on_bad_row="skip")
    assert [ex.item_id for ex in ds] == ["test/background/0", "test/add/0", "test/remove/1", "test/global/2", "test/add/3"]
    assert ds.bad_rows.counts() == {"idx": 1, "image": 1}
    assert ds[1].category == "add" and ds[1].metadata["split"] == "test" and ds[1].metadata["hash"] == "h1"


def test_editworld_entries_without_output_caption_are_kept_with_text_missing(tmp_path):
    root = make_editworld(tmp_path / "ew")
    with pytest.raises(DataRowError, match=r"'sample1'.*'original_img_path'"):
        open_dataset(f"editworld:{root}")
    ds = open_dataset(f"editworld:{root}", on_bad_row="skip")
    by = {ex.item_id: ex for ex in ds}
    assert sorted(by) == ["exaggeration/group_2/sample0", "long_term/group_0/sample0",
                          "physical_trans/group_0/sample0", "spatial_trans/group_1/sample0"]
    assert by["long_term/group_0/sample0"].output_caption == "an old scene 0"
    assert "missing_text" not in by["long_term/group_0/sample0"].metadata
    nocap = by["physical_trans/group_0/sample0"]
    assert nocap.output_caption == "" and nocap.metadata["missing_text"] == "output_caption"
    assert nocap.instruction == "let time pass 1" and nocap.load_target().shape == (3, 64, 64)
    assert by["spatial_trans/group_1/sample0"].metadata["branch"] == "video"
    assert nocap.metadata["branch"] == "text-to-image"


def test_official_layout_as_its_writers_write_it(tmp_path):
    """generate_img_dataset.py writes prompt.json with "caption" (the released prompts say "input");
    prepare_dataset.py writes seeds as strings."""
    folders = []
    for i, key in enumerate(["caption", "input", "caption"]):
        d = tmp_path / f"{i:07d}"
        d.mkdir()
        (d / "prompt.json").write_text(json.dumps({key: f"photo {i}", "edit": f"edit {i}", "output": f"photo {i} edited",
                                                   "url": "http://x"}))
        for seed in ("1234", "98765"):
            save(scene(i), d / f"{seed}_0.jpg", "JPEG")
            save(scene(i + 50), d / f"{seed}_1.jpg", "JPEG")
        (d / "metadata.jsonl").write_text("\n".join(json.dumps({"seed": int(s), "p2p_threshold": 0.5, "cfg_scale": 8.0,
                                                                 "clip_sim_0": 0.3, "clip_sim_1": 0.3, "clip_sim_dir": 0.25,
                                                                 "clip_sim_image": 0.8}) for s in ("1234", "98765")))
        folders.append([d.name, ["1234", "98765"]])
    (tmp_path / "seeds.json").write_text(json.dumps(folders))
    ds = open_dataset(f"official:{tmp_path}", "all")
    assert [ex.item_id for ex in ds] == [f"{i:07d}/{s}" for i in range(3) for s in ("1234", "98765")]
    assert [ex.input_caption for ex in ds[::2]] == ["photo 0", "photo 1", "photo 2"]
    assert ds[0].metadata["seed"] == 1234 and ds[0].metadata["cfg_scale"] == 8.0
    # a seed that names no file: one clear line naming the entry
    (tmp_path / "seeds.json").write_text(json.dumps([["0000000", ["12a"]]]))
    with pytest.raises(DataRowError, match=r"seeds.json entry 0 \('0000000'\): field 'seeds': '12a'"):
        open_dataset(f"official:{tmp_path}", "all")
