"""CLIP similarities on a tiny random open_clip model saved in the world folder format: each value
against a direct computation, the paper / open_clip / official-compat preprocessing, input checks,
and the loader (relative tokenizer path, world:<name>, missing weights)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from metrics_fixtures import make_tiny_clip_folder, random_images
from safetensors.torch import load_file

from ip2p.errors import ModelLoadError
from ip2p.metrics import ClipSimilarity, clip_similarities, load_clip
from ip2p.util.hashing import hash_state_dict

OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

T0 = ["red disk on grass", "a blue square", "green shapes"]
T1 = ["red disk on snow", "a yellow square", "green shapes, night"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tmp_path_factory.mktemp("clipworld")


@pytest.fixture(scope="module")
def folder(world):
    return make_tiny_clip_folder(world, "clip")


@pytest.fixture(scope="module")
def sim(folder):
    return ClipSimilarity(str(folder), device="cpu", cache=False)


def _direct_features(sim, images, texts, mapped=lambda x: x):
    """Features computed by hand: square bicubic resize, OpenAI mean/std, model, L2-normalise."""
    m = sim.clip.model
    x = F.interpolate(mapped(images), size=(32, 32), mode="bicubic", align_corners=False)
    x = (x - OPENAI_MEAN) / OPENAI_STD
    with torch.no_grad():
        fi = m.encode_image(x)
        ft = m.encode_text(sim.clip.tokenizer(texts))
    return fi / fi.norm(dim=-1, keepdim=True), ft / ft.norm(dim=-1, keepdim=True)


def test_each_similarity_equals_direct_computation(sim):
    x0 = random_images(3, size=48, seed=1)[:, :, :, :40]  # non-square: the paper squashes
    x1 = random_images(3, size=48, seed=2)[:, :, :, :40]
    out = sim(x0, x1, T0, T1)
    i0, t0 = _direct_features(sim, x0, T0)
    i1, t1 = _direct_features(sim, x1, T1)
    d_img, d_txt = i1 - i0, t1 - t0
    expected = {
        "sim_0": (i0 * t0).sum(-1),
        "sim_1": (i1 * t1).sum(-1),
        "sim_direction": (d_img * d_txt).sum(-1) / (d_img.norm(dim=-1) * d_txt.norm(dim=-1)),
        "sim_image": (i0 * i1).sum(-1),
    }
    assert set(out) == set(expected)
    for k, v in expected.items():
        assert out[k].shape == (3,)
        torch.testing.assert_close(out[k], v, atol=2e-5, rtol=0), k


def test_sim_image_of_an_image_with_itself_is_one(sim):
    x = random_images(3, seed=3)
    out = sim(x, x.clone(), T0, T1)
    torch.testing.assert_close(out["sim_image"], torch.ones(3), atol=1e-6, rtol=0)
    assert torch.all(out["sim_direction"] == 0)  # no image change: no direction
    other = sim(x, random_images(3, seed=4), T0, T1)["sim_image"]
    assert torch.all(other < 0.9999)


def test_sim_direction_unchanged_when_text_difference_is_scaled():
    g = torch.Generator().manual_seed(0)
    i0, i1, t0, t1 = (F.normalize(torch.randn(5, 16, generator=g), dim=-1) for _ in range(4))
    base = clip_similarities(i0, i1, t0, t1)
    for k in (0.25, 3.0):
        scaled = clip_similarities(i0, i1, t0, t0 + k * (t1 - t0))
        torch.testing.assert_close(scaled["sim_direction"], base["sim_direction"])
    flipped = clip_similarities(i0, i1, t0, t0 - (t1 - t0))
    torch.testing.assert_close(flipped["sim_direction"], -base["sim_direction"])


def test_official_compat_feeds_minus_one_to_one_and_differs_from_paper(folder, sim):
    compat = ClipSimilarity(str(folder), device="cpu", preprocess="official-compat", cache=False)
    x = random_images(3, seed=5)
    expected, _ = _direct_features(compat, x, T0, mapped=lambda t: 2 * t - 1)
    torch.testing.assert_close(compat.encode_images(x), expected, atol=2e-5, rtol=0)
    paper = sim.encode_images(x)
    assert (compat.encode_images(x) - paper).abs().max() > 1e-2
    assert compat.spec()["preprocess"]["mode"] == "official-compat"
    assert "2x-1" in compat.spec()["preprocess"]["input_map"]


def test_open_clip_preprocess_is_the_models_own_transform(world):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    folder = make_tiny_clip_folder(world, "clip-shortest", resize_mode="shortest")
    s = ClipSimilarity(str(folder), device="cpu", preprocess="open_clip", cache=False)
    x = random_images(2, size=56, seed=6)[:, :, :40, :]  # 40 x 56: resize short side, crop centre
    transform = image_transform_v2(PreprocessCfg(size=32, resize_mode="shortest"), is_train=False)
    with torch.no_grad():
        f = s.clip.model.encode_image(transform(x))
    torch.testing.assert_close(s.encode_images(x), F.normalize(f, dim=-1), atol=2e-5, rtol=0)
    paper = ClipSimilarity.from_loaded(s.clip, preprocess="paper", cache=False)
    assert (paper.encode_images(x) - s.encode_images(x)).abs().max() > 1e-3


def test_bad_inputs_are_refused_naming_the_argument(sim):
    x = random_images(2, seed=7)
    t = ["a", "b"]
    with pytest.raises(ValueError, match=r"image_1.*\[0, 1\].*\(x \+ 1\) / 2"):
        sim(x, 2 * x - 1, t, t)
    with pytest.raises(ValueError, match="image_0.*255"):
        sim(x * 255, x, t, t)
    with pytest.raises(ValueError, match=r"image_0.*\[N, 3, H, W\]"):
        sim(x[0], x[0], t, t)
    with pytest.raises(ValueError, match="image_1.*batch size 1"):
        sim(x, x[:1], t, t)
    with pytest.raises(ValueError, match="text_1: 1 strings for 2 images"):
        sim(x, x, t, ["a"])
    with pytest.raises(ValueError, match="text_0.*single string"):
        sim(x, x, "a", t)
    with pytest.raises(ValueError, match="image_0.*dtype torch.uint8"):
        sim((x * 255).to(torch.uint8), x, t, t)
    # a hair outside [0, 1] (resampling) is accepted
    sim((x + 2e-4).clamp(max=1.0002), x, t, t)


def test_encode_images_passes_gradients_for_guidance(sim):
    x = random_images(2, seed=8).requires_grad_(True)
    (sim.encode_images(x) * sim.encode_texts(["a", "b"])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_spec_names_the_weights_that_were_loaded(folder, sim):
    spec = sim.spec()
    state = load_file(str(folder / "open_clip_model.safetensors"))
    assert spec["weights_hash"] == hash_state_dict(state)
    assert spec["preprocess"]["mode"] == "paper" and spec["preprocess"]["size"] == [32, 32]
    assert spec["caption_source"] == "input_caption/output_caption"
    assert spec["tokenizer"].startswith("hf:")


def test_world_names_load_through_resolve_source(world, folder, monkeypatch):
    import ip2p.world

    monkeypatch.setattr(ip2p.world, "WEIGHTS_DIR", world)
    loaded = load_clip("world:clip", device="cpu")
    assert loaded.identity["backbone"] == "world:clip"
    assert loaded.identity["weights_hash"] == load_clip(str(folder), device="cpu").identity["weights_hash"]
    # the relative hf_tokenizer_name "../tokenizer" was resolved against the folder
    ids = loaded.tokenizer(["ab"])[0]
    assert int(ids[0]) == int(ids.max()) - 1 and int(ids[3]) == int(ids.max())  # sot a b</w> eot
    with pytest.raises(ModelLoadError, match="world:clip-guide.*not built"):
        load_clip("world:clip-guide", device="cpu")


def test_open_clip_bpe_tokenizer_when_no_hf_tokenizer_is_named(world):
    folder = make_tiny_clip_folder(world, "clip-bpe", tokenizer="simple")
    s = ClipSimilarity(str(folder), device="cpu", cache=False)
    ids = s.clip.tokenizer(["a red circle"])[0]
    assert int(ids[0]) == 49406 and int(ids.max()) == 49407
    out = s(random_images(1), random_images(1, seed=1), ["a"], ["b"])
    assert torch.isfinite(out["sim_direction"]).all()


def test_tokenizer_whose_end_token_is_not_highest_is_refused(world):
    folder = make_tiny_clip_folder(world, "clip-badtok", specials_last=False)
    with pytest.raises(ModelLoadError, match="highest"):
        load_clip(str(folder), device="cpu")


def test_missing_weights_name_the_file_and_where_to_put_it(world, tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_clip("ViT-L-14", "openai", device="cpu", cache_dir=str(tmp_path))
    msg = str(e.value)
    assert "ViT-L-14" in msg and str(tmp_path) in msg and "pretrained=<path" in msg
    assert "vit_large_patch14_clip_224.openai" in msg or "ViT-L-14.pt" in msg
    with pytest.raises(ModelLoadError, match="neither a weights file that exists nor a known open_clip tag"):
        load_clip("ViT-L-14", "no-such-tag", device="cpu")
    broken = make_tiny_clip_folder(world, "clip-noweights")
    (broken / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="open_clip_model.safetensors is missing"):
        load_clip(str(broken), device="cpu")


def test_fp16_is_close_to_fp32_and_recorded(folder, sim):
    half = ClipSimilarity(str(folder), device="cpu", precision="fp16", cache=False)
    x0, x1 = random_images(2, seed=9), random_images(2, seed=10)
    ref, got = sim(x0, x1, T0[:2], T1[:2]), half(x0, x1, T0[:2], T1[:2])
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=2e-2, rtol=0)
    assert half.spec()["precision"] == "fp16" and half.spec()["weights_hash"] == sim.spec()["weights_hash"]
    assert half.image_keys(x0) != sim.image_keys(x0)  # cached separately from fp32 embeddings


def test_builtin_name_with_tag_from_local_hf_cache_or_weights_file(tmp_path, monkeypatch):
    import json

    import open_clip
    import open_clip.pretrained as ocp
    from metrics_fixtures import tiny_model_cfg
    from safetensors.torch import save_file

    cfg = tiny_model_cfg(49408)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "ip2p-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in open_clip.CLIP(**cfg).state_dict().items()}
    # a tag whose weights sit in the Hugging Face cache layout (as a download would have left them)
    snap = tmp_path / "hf" / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(state, str(snap / "open_clip_model.safetensors"))
    (tmp_path / "hf" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hf" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    tag_cfg = {"hf_hub": "org/tiny/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    monkeypatch.setitem(ocp._PRETRAINED, "ip2p-test-tiny", {"mytag": tag_cfg})

    loaded = load_clip("ip2p-test-tiny", "mytag", device="cpu", cache_dir=str(tmp_path / "hf"))
    (tmp_path / "hf" / "models--org--tiny" / "refs" / "main").unlink()  # placed by hand: no refs
    assert load_clip("ip2p-test-tiny", "mytag", device="cpu", cache_dir=str(tmp_path / "hf")).identity["weights_hash"] == hash_state_dict(state)
    assert loaded.identity["weights_hash"] == hash_state_dict(state)
    assert loaded.identity["pretrained"] == "mytag" and loaded.identity["arch"] == "ip2p-test-tiny+quick_gelu"
    assert tuple(loaded.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)  # the tag's preprocessing
    assert ClipSimilarity(loaded=loaded, cache=False).spec()["preprocess"]["std"] == [0.25, 0.25, 0.25]

    # the same weights as a plain file; and random weights when asked
    save_file(state, str(tmp_path / "w.safetensors"))
    from_file = load_clip("ip2p-test-tiny", str(tmp_path / "w.safetensors"), device="cpu")
    assert from_file.identity["weights_hash"] == hash_state_dict(state)
    assert load_clip("ip2p-test-tiny", None, device="cpu").identity["pretrained"] == "random"
    # nothing in that cache for another location
    with pytest.raises(ModelLoadError, match="models--org--tiny"):
        load_clip("ip2p-test-tiny", "mytag", device="cpu", cache_dir=str(tmp_path / "empty"))
