"""Small fixtures laid out exactly as each published benchmark releases its files (names, keys,
encodings), with deliberately bad rows, shared by the reader tests and the suite runs."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ip2p.data.testsets import encode_pie_mask


def scene(seed: int, size=(64, 64)) -> Image.Image:
    """A simple picture: a coloured background with a rectangle (the world model's scale)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(0, 255, 3, dtype=np.uint8)
    return Image.fromarray(arr)


def save(img: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_image(size=(64, 64), box=(8, 8, 40, 40)) -> Image.Image:
    """MagicBrush masks: white = the region the annotator edited."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


# ---- MagicBrush ------------------------------------------------------------------------------

MB_SESSIONS = {"327726": 3, "242679": 1, "555555": 3}  # img_id -> turns (555555 has a bad turn 2)


def make_magicbrush_release(root: Path, *, bad_rows: bool = True, zipped: bool = False) -> Path:
    """``root/test/edit_sessions.json``, ``root/test/images/<id>/...``, ``root/test/{global,local}_descriptions.json``
    (or, ``zipped``, the same folder as a password-protected zip ``root/test.zip``)."""
    test = root / "test"
    sessions, global_caps, local_caps = {}, {}, {}
    for k, (img_id, n) in enumerate(MB_SESSIONS.items()):
        folder = test / "images" / img_id
        save(scene(100 * k), folder / f"{img_id}-input.png")
        global_caps[img_id] = {f"{img_id}-input.png": f"a photo number {k}"}
        local_caps[img_id] = {}
        turns = []
        for t in range(1, n + 1):
            save(scene(100 * k + t), folder / f"{img_id}-output{t}.png")
            save(mask_image(box=(4 * t, 4 * t, 40, 40)), folder / f"{img_id}-mask{t}.png")
            turns.append({"input": f"{img_id}-input.png" if t == 1 else f"{img_id}-output{t - 1}.png",
                          "instruction": f"make change {t}", "output": f"{img_id}-output{t}.png",
                          "mask": f"{img_id}-mask{t}.png"})
            global_caps[img_id][f"{img_id}-output{t}.png"] = f"a photo number {k} after change {t}"
            local_caps[img_id][f"{img_id}-output{t}.png"] = f"change {t}"
        sessions[img_id] = turns
    del local_caps["327726"]["327726-output2.png"]  # a caption the local file lacks: CLIP-T NaN, counted
    if bad_rows:
        sessions["555555"][1]["instruction"] = None  # bad turn 2: its iterative successors cannot chain
        sessions["999999"] = [{"input": "999999-input.png", "instruction": "x", "output": "999999-output1.png",
                               "mask": "999999-mask1.png"}]  # no image files at all
    (test / "edit_sessions.json").write_text(json.dumps(sessions))
    (test / "global_descriptions.json").write_text(json.dumps(global_caps))
    (test / "local_descriptions.json").write_text(json.dumps(local_caps))
    if not zipped:
        return test
    zpath = root / "test.zip"
    subprocess.run(["zip", "-q", "-r", "-P", "MagicBrush", str(zpath), "test"], cwd=root, check=True)
    import shutil

    shutil.rmtree(test)
    return zpath


# ---- Emu Edit --------------------------------------------------------------------------------

EMU_SCHEMA = pa.schema([("instruction", pa.string()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("task", pa.string()), ("split", pa.string()), ("idx", pa.int64()), ("hash", pa.string()),
                        ("input_caption", pa.string()), ("output_caption", pa.string())])


def make_emu_edit(root: Path, *, bad_rows: bool = True) -> Path:
    """``root/data/test-00000-of-00001.parquet`` as the Hub's parquet conversion writes it. The same
    ``idx`` appears under two tasks (the authors key rows by (split, task, idx))."""
    rows = []
    for i, (task, idx) in enumerate([("background", 0), ("add", 0), ("remove", 1), ("global", 2), ("add", 3)]):
        rows.append({"instruction": f"edit {i}", "image": {"bytes": png_bytes(scene(200 + i)), "path": None},
                     "task": task, "split": "test", "idx": idx, "hash": f"h{i}",
                     "input_caption": f"a scene {i}", "output_caption": f"a changed scene {i}"})
    if bad_rows:
        rows.append({**rows[0], "hash": "dup"})  # the same (split, task, idx) twice
        rows.append({**rows[2], "idx": 9, "image": None})  # no image
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    (root / "data").mkdir(parents=True, exist_ok=True)
    path = root / "data" / "test-00000-of-00001.parquet"
    pq.write_table(pa.table(cols, schema=EMU_SCHEMA), path)
    return root / "data"


# ---- PIE-Bench -------------------------------------------------------------------------------

def make_pie_bench(root: Path, *, bad_rows: bool = True, size: int = 512) -> Path:
    """``root/mapping_file.json`` + ``root/annotation_images/<type folder>/<id>.jpg`` (512x512 JPEG,
    as released); masks run-length encoded over 512x512; prompts with ``[ ]`` markers."""
    entries = {}
    specs = [("000000000000", "0", "0_random_140/000000000000.jpg"),
             ("111000000000", "1", "1_change_object_80/1_artificial/1_animal/111000000000.jpg"),
             ("222000000001", "2", "2_add_object_80/1_artificial/1_animal/222000000001.jpg"),
             ("911000000002", "9", "9_change_style_80/1_artificial/1_animal/911000000002.jpg")]
    for k, (key, type_id, rel) in enumerate(specs):
        save(scene(300 + k, (size, size)), root / "annotation_images" / rel, "JPEG")
        mask = np.zeros((512, 512), dtype=bool)
        mask[100 + 10 * k:300, 50:400] = True
        entries[key] = {"image_path": rel, "original_prompt": f"a [cat] sitting number {k}",
                        "editing_prompt": f"a [dog] sitting number {k}", "editing_instruction": f"make the cat a dog {k}",
                        "editing_type_id": type_id, "blended_word": "cat dog", "mask": encode_pie_mask(mask)}
    if bad_rows:
        entries["999000000000"] = {**entries["000000000000"], "mask": [5, 3, 7]}  # odd-length run list
        entries["999000000001"] = {**entries["000000000000"], "image_path": "0_random_140/missing.jpg"}
    (root / "mapping_file.json").write_text(json.dumps(entries))
    return root


# ---- EditWorld -------------------------------------------------------------------------------

def make_editworld(root: Path, *, bad_rows: bool = True) -> Path:
    """``root/<category>/group_<k>/img_txt.json`` as EditWorld's writer saves it ("instuction",
    original/target image paths, no output caption), plus one entry that has a caption."""
    layout = [("long_term", 0, True), ("physical_trans", 0, False), ("spatial_trans", 1, False), ("exaggeration", 2, False)]
    for k, (cat, group, with_caption) in enumerate(layout):
        folder = root / cat / f"group_{group}"
        save(scene(400 + k), folder / "sample0_ori.png")
        save(scene(450 + k), folder / "sample0_tar.png")
        # paths as written on the generating machine; the reader finds the files beside img_txt.json
        gen = f"/gen_machine/editworld/{cat}/group_{group}"
        entry = {"instuction": f"let time pass {k}", "original_img_path": f"{gen}/sample0_ori.png",
                 "target_img_path": f"{gen}/sample0_tar.png"}
        if with_caption:
            entry["target_cation"] = f"an old scene {k}"
        data = {"sample0": entry}
        if bad_rows and k == 1:
            data["sample1"] = {"instuction": "melt it", "original_img_path": str(folder / "nope.png"),
                               "target_img_path": str(folder / "sample0_tar.png")}
        (folder / "img_txt.json").write_text(json.dumps(data))
    return root
