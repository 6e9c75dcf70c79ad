"""Embedding cache: a sweep encodes each distinct input image and caption once; an on-disk cache is
safe with two processes writing the same keys and lets a later instance encode nothing; keys follow
the weights and the preprocessing."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3

import torch
from metrics_fixtures import cache_writer, count_encoder_rows, make_tiny_clip_folder, random_images

from ip2p.metrics import ClipSimilarity, EmbeddingCache

IN_CAPS = ["red disk", "blue square", "green star"]
OUT_CAPS = ["red disk, snow", "yellow square", "green star, night"]


def test_sweep_of_five_settings_encodes_each_input_and_caption_once(tmp_path):
    folder = make_tiny_clip_folder(tmp_path, "clip")
    sim = ClipSimilarity(str(folder), device="cpu")
    counts = count_encoder_rows(sim.clip.model)
    inputs = random_images(3, seed=0)
    outputs = [random_images(3, seed=10 + s) for s in range(5)]  # one batch per setting

    # one pass over all 5 x 3 rows: input images and captions repeat once per setting
    rows_in = inputs.repeat(5, 1, 1, 1)
    rows_out = torch.cat(outputs)
    out = sim.score(rows_in, rows_out, IN_CAPS * 5, OUT_CAPS * 5)
    assert counts == {"images": 3 + 15, "texts": 3 + 3}
    assert sim.encoded_images == 18 and sim.encoded_texts == 6

    # de-duplication does not mix rows up: each row equals its own uncached computation
    plain = ClipSimilarity.from_loaded(sim.clip, cache=False)
    ref = plain(rows_in, rows_out, IN_CAPS * 5, OUT_CAPS * 5)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], atol=1e-6, rtol=0)

    # the same sweep again, one call per setting: everything comes from the cache
    before = dict(counts)
    for s in range(5):
        sim.score(inputs, outputs[s], IN_CAPS, OUT_CAPS)
    assert counts == before


def test_settings_in_separate_calls_encode_inputs_once(tmp_path):
    folder = make_tiny_clip_folder(tmp_path, "clip")
    sim = ClipSimilarity(str(folder), device="cpu")
    counts = count_encoder_rows(sim.clip.model)
    inputs = random_images(3, seed=0)
    for s in range(5):
        sim.score(inputs, random_images(3, seed=10 + s), IN_CAPS, OUT_CAPS)
    assert counts == {"images": 3 + 15, "texts": 6}


def test_disk_cache_with_two_concurrent_writers(tmp_path):
    folder = make_tiny_clip_folder(tmp_path, "clip")
    images = random_images(12, seed=1)
    texts = IN_CAPS + OUT_CAPS
    plain = ClipSimilarity(str(folder), device="cpu", cache=False)
    ref_images, ref_texts = plain.encode_images(images).detach(), plain.encode_texts(texts).detach()
    items = dict(zip(plain.image_keys(images) + plain.text_keys(texts), torch.cat([ref_images, ref_texts])))
    torch.save(items, tmp_path / "items.pt")

    # two processes write the same 18 keys at the same time, each in 9 small transactions
    db = tmp_path / "cache" / "emb.sqlite"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=cache_writer, args=(str(db), str(tmp_path / "items.pt"), barrier, str(tmp_path / f"out{i}.pt")))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 12 + 6
    for i in range(2):
        got = torch.load(tmp_path / f"out{i}.pt")
        assert set(got) == set(items)
        for k, v in items.items():
            assert torch.equal(got[k], v)

    # a fresh ClipSimilarity on that file encodes nothing and returns the stored values
    reader = ClipSimilarity(str(folder), device="cpu", cache=str(db))
    counts = count_encoder_rows(reader.clip.model)
    got_images, got_texts = reader.embed_images(images), reader.embed_texts(texts)
    assert counts == {"images": 0, "texts": 0}
    assert torch.equal(got_images, ref_images) and torch.equal(got_texts, ref_texts)
    assert reader.cache.hits == 18 and reader.cache.misses == 0


def test_keys_follow_weights_and_preprocessing_not_paths(tmp_path):
    cache = EmbeddingCache(tmp_path / "shared")
    a = ClipSimilarity(str(make_tiny_clip_folder(tmp_path, "a", seed=0)), device="cpu", cache=cache)
    x = random_images(2, seed=2)
    a.embed_images(x)
    a.embed_texts(IN_CAPS)

    # same weights in another folder: shares entries; other weights: encodes anew
    same = ClipSimilarity(str(make_tiny_clip_folder(tmp_path / "elsewhere", "a", seed=0)), device="cpu", cache=cache)
    other = ClipSimilarity(str(make_tiny_clip_folder(tmp_path, "b", seed=1)), device="cpu", cache=cache)
    same.embed_images(x)
    other.embed_images(x)
    assert same.encoded_images == 0 and other.encoded_images == 2

    # another preprocessing re-encodes images but reuses the captions
    compat = ClipSimilarity.from_loaded(a.clip, preprocess="official-compat", cache=cache)
    compat.embed_images(x)
    compat.embed_texts(IN_CAPS)
    assert compat.encoded_images == 2 and compat.encoded_texts == 0

    # one changed pixel is another image
    y = x.clone()
    y[1, 0, 0, 0] = 1 - y[1, 0, 0, 0]
    a.embed_images(y)
    assert a.encoded_images == 2 + 1
