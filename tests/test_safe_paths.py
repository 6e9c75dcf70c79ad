"""Nothing is written outside its output folder: ``ip2p.util.paths.safe_output_path`` builds every
output path from data and refuses what could leave its root; PIE-Bench's ``image_path`` (the field
the benchmark's output names are built from), official names of every benchmark, variant and spec
names all go through it."""
from __future__ import annotations

import json
import os
import sys

import pandas as pd
import pytest

from bench.benchmarks import export_official_names, setting_folder
from ip2p.data import open_dataset
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError, SpecError
from ip2p.util.paths import MAX_COMPONENT_BYTES, UnsafePathError, safe_name, safe_output_path

sys.path.insert(0, os.path.dirname(__file__))
from benchmark_fixtures import make_pie_bench, png_bytes, scene  # noqa: E402

HOSTILE = ["..", "../x.png", "a/../../x.png", "a/..", ".", "./x", "/etc/passwd", "//x", "~/x.png", "a\x00b.png",
           "a\nb", "..\\..\\x.png", "C:\\Windows\\x.png", "C:x.png", "c:/x.png", "a//b", "a/", "",
           "x" * (MAX_COMPONENT_BYTES + 1), "é" * (MAX_COMPONENT_BYTES // 2 + 1), 7, None]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_names_are_refused(tmp_path, name):
    with pytest.raises(UnsafePathError, match="official name"):
        safe_output_path(tmp_path, name, what="official name")
    assert isinstance(UnsafePathError("x"), SpecError)  # exit 2 at the CLI


def test_safe_names_are_kept_as_given(tmp_path):
    assert safe_output_path(tmp_path, "a", "b/c.png") == tmp_path / "a" / "b" / "c.png"
    assert safe_output_path(tmp_path, "猫の写真 ü.png") == tmp_path / "猫の写真 ü.png"
    assert safe_output_path(tmp_path, "x" * MAX_COMPONENT_BYTES).name == "x" * MAX_COMPONENT_BYTES
    assert safe_output_path(tmp_path, "..x..") == tmp_path / "..x.."


def test_a_symbolic_link_on_the_way_cannot_lead_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "link")
    with pytest.raises(UnsafePathError, match="outside"):
        safe_output_path(tmp_path / "out", "link/x.png")


@pytest.mark.parametrize("text", ["..", "/etc", "a/b", "C:\\x", "a\x00", "x" * 500, "", " . ", "ok name"])
def test_safe_name_maps_any_text_to_one_component(tmp_path, text):
    name = safe_name(text)
    assert safe_output_path(tmp_path, name).parent == tmp_path
    if text == "ok name":
        assert name == text
    else:
        assert name != text and len(name.encode()) <= 100
    assert safe_name(text + "!") != name  # different texts, different names


def test_pie_bench_image_path_climbing_out_is_a_bad_row(tmp_path):
    root = make_pie_bench(tmp_path / "pie", bad_rows=False)
    victim = tmp_path / "victim.jpg"
    victim.write_bytes((root / "annotation_images/0_random_140/000000000000.jpg").read_bytes())
    mapping = json.loads((root / "mapping_file.json").read_text())
    mapping["000000000000"]["image_path"] = "../../victim.jpg"  # a real file, outside the benchmark
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    with pytest.raises(DataRowError, match=r"entry '000000000000'.*image_path.*'\.\./\.\./victim\.jpg'.*'\.\.'"):
        open_dataset(f"pie_bench:{root}")
    ds = open_dataset(f"pie_bench:{root}", on_bad_row="skip")
    assert len(ds) == 3 and "000000000000" not in {ex.item_id for ex in ds}


def _export(tmp_path, kind, items, method="m"):
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "images" / "a.png").write_bytes(png_bytes(scene(1)))
    df = pd.DataFrame([{"item_id": ex.item_id, "method": method, "knobs": "{}", "seed": 0, "output_image": "images/a.png"}
                       for ex in items])
    return run, export_official_names(run, kind, df, items)


@pytest.mark.parametrize("kind,item_id,meta", [
    ("emu_edit", "test/../../../escaped/0", {}),
    ("editworld", "/tmp/escaped", {}),
    ("magicbrush", "1/1", {"img_id": "..", "official_name": "../../escaped.png"}),
    ("pie_bench", "k", {"image_path": "../../../../escaped.jpg"}),
])
def test_official_names_from_data_stay_in_the_run_folder(tmp_path, kind, item_id, meta):
    ok = EditExample(item_id="test/add/1" if kind == "emu_edit" else "good", instruction="x", input_image=None,
                     metadata={"img_id": "1", "official_name": "1_1.png"} if kind == "magicbrush" else
                     {"image_path": "0/a.jpg"} if kind == "pie_bench" else {})
    bad = EditExample(item_id=item_id, instruction="x", input_image=None, metadata=meta)
    if kind == "magicbrush":
        ok.item_id = "1/2"
    run, index = _export(tmp_path, kind, [ok, bad])
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg")]
    assert all(run in p.parents for p in written), written
    assert not list(tmp_path.rglob("escaped*")) and not (tmp_path.parent / "escaped").exists()
    (entry,) = index.values()
    assert entry["files"] == 1 and entry["refused"][0]["item_id"] == item_id
    assert json.loads((run / "benchmark/official/index.json").read_text()) == index


def test_method_labels_become_safe_folder_names():
    folder = setting_folder("../../evil", "{}", 0)
    assert "/" not in folder and not folder.startswith("..")
    assert setting_folder("ip2p", "{}", 3).startswith("ip2p__")


def test_default_run_folder_of_a_hostile_spec_name_stays_under_results():
    from bench.sweep_cli import default_run_folder

    for name in ("../../etc", "/abs", "a/b", "C:\\x", "ok"):
        p = default_run_folder(name)
        assert p.parent == __import__("pathlib").Path("results/runs"), p
    assert default_run_folder("ok").name == "ok"
