"""The CLIP filter of generated pairs (ip2p.data.pair_filter): thresholds and the per-prompt cap on
constructed metadata, and the whole command on a constructed pairs folder with world:clip."""
import json
import random

import pytest

from ip2p.data.filtering import ClipFilter
from ip2p.data.pair_filter import filter_decisions, filter_pairs
from ip2p.data.pairs import append_row, official_jpeg
from ip2p.util.io import atomic_write_text, load_image

KEYS = ("clip_sim_image", "clip_sim_dir", "clip_sim_0", "clip_sim_1")


def _rows(n_prompts=6, per_prompt=7, seed=0):
    rng = random.Random(seed)
    rows = []
    for p in range(n_prompts):
        for s in range(per_prompt):
            rows.append({"prompt": f"{p:07d}", "seed": 1000 * p + s, "clip_sim_image": rng.uniform(0.5, 1.0),
                         "clip_sim_dir": rng.uniform(-0.2, 0.6), "clip_sim_0": rng.uniform(0.0, 0.4),
                         "clip_sim_1": rng.uniform(0.0, 0.4)})
    return rows


def _passes(r, flt):
    return (r["clip_sim_image"] >= flt.min_image and r["clip_sim_dir"] >= flt.min_direction
            and r["clip_sim_0"] >= flt.min_sim_0 and r["clip_sim_1"] >= flt.min_sim_1)


@pytest.mark.parametrize("k", [None, 1, 2, 4])
def test_keeps_exactly_the_pairs_above_every_threshold_and_at_most_k_per_prompt(k):
    rows = _rows()
    rows[0].update(clip_sim_image=0.75, clip_sim_dir=0.2, clip_sim_0=0.2, clip_sim_1=0.2)  # on every threshold: kept
    rows[1].update(clip_sim_image=0.7499, clip_sim_dir=0.5, clip_sim_0=0.3, clip_sim_1=0.3)  # just below one: out
    flt = ClipFilter(max_per_prompt=k)
    d = filter_decisions(rows, flt)
    passing = [r for r in rows if _passes(r, flt)]
    expected = set()
    for p in {r["prompt"] for r in passing}:
        mine = sorted((r for r in passing if r["prompt"] == p), key=lambda r: -r["clip_sim_dir"])
        expected |= {(p, r["seed"]) for r in mine[: k or len(mine)]}
    assert set(d["kept"]) == expected
    assert (rows[0]["prompt"], rows[0]["seed"]) in {(r["prompt"], r["seed"]) for r in passing}
    assert (rows[1]["prompt"], rows[1]["seed"]) not in set(d["kept"])
    assert 0 < len(expected) < len(rows)
    if k is not None:
        counts = {}
        for p, _ in d["kept"]:
            counts[p] = counts.get(p, 0) + 1
        assert max(counts.values()) <= k
        assert d["removed_by_cap"] == len(passing) - len(expected)
    # the table's counts: each threshold alone, then in order
    for attr, key in (("min_image", "clip_sim_image"), ("min_direction", "clip_sim_dir"), ("min_sim_0", "clip_sim_0")):
        assert d["fails_alone"][attr] == sum(r[key] < getattr(flt, attr) for r in rows)
    assert sum(d["removed_in_order"].values()) == len(rows) - len(passing)


def test_every_threshold_is_overridable_and_missing_similarities_are_counted_not_kept():
    rows = _rows()
    rows[3]["clip_sim_dir"] = None
    loose = ClipFilter(min_image=0.0, min_direction=-1.0, min_sim_0=0.0, min_sim_1=0.0, max_per_prompt=None)
    d = filter_decisions(rows, loose)
    assert len(d["kept"]) == len(rows) - 1 and d["not_computed"] == 1
    only_dir = ClipFilter(min_image=None, min_direction=0.3, min_sim_0=None, min_sim_1=None, max_per_prompt=None)
    d = filter_decisions(rows, only_dir)
    assert set(d["kept"]) == {(r["prompt"], r["seed"]) for r in rows if r["clip_sim_dir"] is not None and r["clip_sim_dir"] >= 0.3}
    assert list(d["removed_in_order"]) == ["min_direction"]


@pytest.fixture(scope="module")
def clip():
    from ip2p.metrics import ClipSimilarity

    return ClipSimilarity("world:clip", None, device="cpu")  # in-memory cache: equal images, equal features


def _pairs_folder(root, n_prompts=3, per_prompt=3):
    """A folder in the layout `ip2p data pairs` writes, with world scenes as images: for each
    prompt, pairs whose second image is the exact edit, the unedited input, or another scene."""
    from ip2p.data.world.examples import make_example

    for p in range(n_prompts):
        ex = make_example("train", p)
        other = make_example("train", 100 + p)
        folder = root / f"{p:07d}"
        atomic_write_text(folder / "prompt.json", json.dumps({"input": ex.input_caption, "edit": ex.instruction,
                                                              "output": ex.output_caption}))
        for s, second in enumerate([ex.target_image, ex.input_image, other.input_image][:per_prompt]):
            seed = 10 * p + s
            (folder / f"{seed}_0.jpg").write_bytes(official_jpeg(ex.input_image))
            (folder / f"{seed}_1.jpg").write_bytes(official_jpeg(second))
            append_row(folder / "metadata.jsonl", {"seed": seed, "p2p_threshold": 0.5, "cfg_scale": 10.0})


def test_filter_command_computes_similarities_writes_seeds_and_the_official_reader_reads_them(tmp_path, clip):
    _pairs_folder(tmp_path)
    flt = ClipFilter(min_image=0.5, min_direction=0.05, min_sim_0=0.0, min_sim_1=0.0, max_per_prompt=1)
    report = filter_pairs(tmp_path, clip, flt, progress=False)
    assert report["pairs"] == 9
    rows = []
    for p in range(3):
        folder = tmp_path / f"{p:07d}"
        caps = json.loads((folder / "prompt.json").read_text())
        for r in (json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()):
            i0 = load_image(folder / f"{r['seed']}_0.jpg")[None]
            i1 = load_image(folder / f"{r['seed']}_1.jpg")[None]
            want = clip(i0, i1, [caps["input"]], [caps["output"]])
            assert r["clip_sim_dir"] == pytest.approx(float(want["sim_direction"][0]), abs=1e-5)
            assert r["clip_sim_image"] == pytest.approx(float(want["sim_image"][0]), abs=1e-5)
            rows.append({"prompt": folder.name, **r})
    expected = set(filter_decisions(rows, flt)["kept"])
    seeds = json.loads((tmp_path / "seeds.json").read_text())
    assert {(d, int(s)) for d, ss in seeds for s in ss} == expected and expected
    assert all(isinstance(s, str) for _, ss in seeds for s in ss)
    assert "| **kept** |" in (tmp_path / "filter_table.md").read_text()
    from ip2p.data import open_dataset

    ds = open_dataset(f"official:{tmp_path}", "all")
    assert {ex.item_id for ex in ds} == {f"{d}/{s}" for d, s in expected}
    assert all(ex.metadata["clip_sim_dir"] >= 0.05 for ex in ds)


def test_a_second_filter_run_encodes_nothing_through_the_cache(tmp_path):
    from ip2p.metrics import ClipSimilarity

    _pairs_folder(tmp_path, n_prompts=2, per_prompt=2)
    cache = str(tmp_path / "cache.sqlite")
    first = ClipSimilarity("world:clip", None, device="cpu", cache=cache)
    a = filter_pairs(tmp_path, first, ClipFilter(min_image=0.9), progress=False)
    assert first.encoded_images > 0
    second = ClipSimilarity("world:clip", None, device="cpu", cache=cache)
    b = filter_pairs(tmp_path, second, ClipFilter(min_image=0.0, min_direction=None, min_sim_0=None, min_sim_1=None),
                     progress=False)
    assert second.encoded_images == 0 and second.encoded_texts == 0
    assert b["kept"] >= a["kept"] and b["kept"] == 4
