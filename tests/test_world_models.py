"""The shipped world models, offline: they load through the project's loaders and pass their sanity bars."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ip2p.models import resolve_source
from ip2p.world import WEIGHTS_DIR, world_model_path
from ip2p.world.evaluate import eval_caption_items
from ip2p.data.world.scenes import COLOURS, KINDS, caption, render


def _need(name: str, marker: str):
    """The shipped folder of world:<name>; a missing shipped file fails the test (never a skip)."""
    path = world_model_path(name)  # raises ModelLoadError naming the missing folder
    assert (path / marker).exists(), f"world:{name} is shipped without {marker} ({path})"
    return path


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def metric_clip():
    _need("clip", "open_clip_model.safetensors")
    from ip2p.metrics import ClipSimilarity

    return ClipSimilarity("world:clip", pretrained=None, cache=False)


def test_names_resolve_to_shipped_folders():
    for name, folder in (("sd", "sd"), ("clip", "clip"), ("clip-guide", "clip-guide")):
        p = _need(name, "")
        assert resolve_source(f"world:{name}") == str(p) and p == WEIGHTS_DIR / folder
    with pytest.raises(Exception, match="unknown world model"):
        resolve_source("world:nope")


def test_weight_budget():
    """All world files (leaving ~9 MiB for world:ip2p) within 45 MiB; no file over 16 MiB."""
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file() and "ip2p" not in p.relative_to(WEIGHTS_DIR).parts[:1]]
    assert files, f"no world weights under {WEIGHTS_DIR}"
    assert max(p.stat().st_size for p in files) <= 16 * 2**20
    assert sum(p.stat().st_size for p in files) <= 45 * 2**20
    unet = WEIGHTS_DIR / "sd" / "unet" / "diffusion_pytorch_model.safetensors"
    if unet.exists():
        assert unet.stat().st_size <= 8.5 * 2**20  # world:ip2p is as large again


def test_vae_reconstructs_test_scenes():
    path = _need("sd", "vae/config.json") / "vae"
    from diffusers import AutoencoderKL

    from ip2p.metrics.pixel import psnr

    vae = AutoencoderKL.from_pretrained(str(path)).eval()
    x, _, _ = eval_caption_items(64)
    with torch.no_grad():
        post = vae.encode(x * 2 - 1).latent_dist
        rec = (vae.decode(post.mode()).sample + 1) / 2
    assert post.mean.shape == (64, 4, 16, 16)
    assert float(psnr(x, rec.clamp(0, 1)).mean()) >= 25.0
    # scaling_factor brings latents to about unit variance, as SD's 0.18215 does
    z = post.sample(generator=torch.Generator().manual_seed(0)) * vae.config.scaling_factor
    assert 0.7 < float(z.std()) < 1.4



def test_latent_ceiling_is_the_vae_round_trip_beside_identity():
    """The floor under a latent editor: the round trip of the exact targets is nearer them than the
    input is overall, and each row's paired mean is its round trip minus identity over its items."""
    from ip2p.models import load_vae
    from ip2p.world import CATEGORIES
    from ip2p.world.evaluate import latent_ceiling

    table = latent_ceiling(load_vae(_need("sd", "vae/config.json") / "vae"), n=24)
    assert set(table) == set(CATEGORIES) | {"all"}  # the first 24 test items cycle through all 12
    assert table["all"]["n"] == 24 and sum(r["n"] for c, r in table.items() if c != "all") == 24
    assert table["all"]["roundtrip"] <= 0.006 < table["all"]["identity"]
    for row in table.values():
        mean, lo, hi = row["paired"]
        assert lo <= mean <= hi
        assert mean == pytest.approx(row["roundtrip"] - row["identity"], abs=2e-5)

def test_error_near_and_away_splits_each_l1_into_two_parts():
    """Identity is exact away from the edit (the mask is where input and target differ), so all its
    error is near it; each output's two parts add up to its L1; the round trip's L1 is latent_ceiling's;
    the editor, which regenerates every pixel, has error away from the edit; the near region grows with
    the margin."""
    from ip2p.models import load_vae
    from ip2p.world.evaluate import error_near_and_away, latent_ceiling

    folder = _need("ip2p", "unet/diffusion_pytorch_model.safetensors")
    table = error_near_and_away(folder, n=12, steps=4)
    ceiling = latent_ceiling(load_vae(folder / "vae"), n=12)
    assert table["all"]["n"] == 12 and 0 < table["all"]["near_share"] < 1
    for c, row in table.items():
        assert row["identity"]["away"] == 0.0 and row["identity"]["near"] == pytest.approx(ceiling[c]["identity"], abs=2e-5)
        assert row["roundtrip"]["l1"] == pytest.approx(ceiling[c]["roundtrip"], abs=2e-5)
        for name in ("editor", "roundtrip", "identity"):
            assert row[name]["near"] + row[name]["away"] == pytest.approx(row[name]["l1"], abs=2e-5)
    assert table["all"]["editor"]["away"] > 0
    wider = error_near_and_away(folder, n=12, steps=4, margin=4)
    assert wider["all"]["near_share"] > table["all"]["near_share"]
    assert wider["all"]["editor"]["l1"] == pytest.approx(table["all"]["editor"]["l1"], abs=1e-6)


def test_compare_editors_pairs_items_and_names_the_worse_editor(tmp_path):
    """Two stages compared: the same editor against itself differs by nothing; an editor whose noise
    prediction is scaled up (over-shooting every step) is the worse one, with its L1 higher overall
    and the items it loses counted on its side."""
    import shutil

    from safetensors.torch import load_file, save_file

    from ip2p.world.evaluate import compare_editors

    shipped = _need("ip2p", "unet/diffusion_pytorch_model.safetensors")
    broken = tmp_path / "broken"
    shutil.copytree(shipped, broken)
    f = broken / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(str(f))
    w["conv_out.weight"], w["conv_out.bias"] = w["conv_out.weight"] * 3, w["conv_out.bias"] * 3
    save_file(w, str(f))
    same = compare_editors(shipped, shipped, n=12, steps=4)
    assert same["all"]["paired_l1_b_minus_a"] == [0.0, 0.0, 0.0] and same["all"]["a_wins"] == same["all"]["b_wins"] == 0
    worse = compare_editors(shipped, broken, n=12, steps=4)
    assert set(worse) == set(same) and worse["all"]["n"] == 12
    mean, lo, hi = worse["all"]["paired_l1_b_minus_a"]
    assert 0 < lo <= mean <= hi
    assert worse["all"]["success_b"] < worse["all"]["success_a"] and worse["all"]["a_wins"] > worse["all"]["b_wins"]
    # the items split by their input's time of day: the two rows partition the items
    night, day = worse["input: night"], worse["input: day"]
    assert night["n"] >= 1 and night["n"] + day["n"] == 12
    assert night["a_wins"] + day["a_wins"] == worse["all"]["a_wins"]
    assert (night["n"] * night["paired_l1_b_minus_a"][0] + day["n"] * day["paired_l1_b_minus_a"][0]) / 12 == \
        pytest.approx(mean, abs=1e-4)


def test_metric_clip_retrieval_and_zero_shot(metric_clip):
    imgs, caps, scenes = eval_caption_items(64)
    fi = metric_clip.encode_images(imgs)
    ft = metric_clip.encode_texts(caps)
    top1 = float(((fi @ ft.t()).argmax(1) == torch.arange(64)).float().mean())
    assert top1 >= 0.6
    # zero-shot: among captions differing only in the colour (or kind) of a single shape
    single = [s for s in (scenes + [s for s in eval_caption_items(256)[2][64:]]) if len(s.shapes) == 1
              and s.shapes[0].kind in KINDS][:48]
    from ip2p.data.world.examples import to_tensor

    x = torch.stack([to_tensor(render(s)) for s in single])
    fx = metric_clip.encode_images(x)
    for field, values, bar in (("colour", list(COLOURS), 0.6), ("kind", list(KINDS), 0.45)):
        texts = [caption(s.replace(shapes=(dataclasses.replace(s.shapes[0], **{field: v}),)), 0)
                 for s in single for v in values]
        f = metric_clip.encode_texts(texts).view(len(single), len(values), -1)
        pred = (fx[:, None] * f).sum(-1).argmax(1)
        truth = torch.tensor([values.index(getattr(s.shapes[0], field)) for s in single])
        acc = float((pred == truth).float().mean())
        assert acc >= bar, f"zero-shot {field} accuracy {acc:.2f} (chance {1 / len(values):.2f})"


def test_guide_clip_differs_and_works():
    g = _need("clip-guide", "open_clip_model.safetensors")
    m = _need("clip", "open_clip_model.safetensors")
    cg = json.loads((g / "open_clip_config.json").read_text())["model_cfg"]
    cm = json.loads((m / "open_clip_config.json").read_text())["model_cfg"]
    assert cg != cm  # different size
    from ip2p.metrics import ClipSimilarity

    guide = ClipSimilarity("world:clip-guide", pretrained=None, cache=False)
    imgs, caps, _ = eval_caption_items(64)
    top1 = float(((guide.encode_images(imgs) @ guide.encode_texts(caps).t()).argmax(1) == torch.arange(64)).float().mean())
    assert top1 >= 0.4


def test_text_to_image_matches_its_captions(metric_clip):
    """Samples (20 steps, guidance 7.5) from the shipped diffusers folder, with the scheduler it ships
    (the recipe's DDIM; SD's PNDM drew textured scenes: own-caption score 0.49 vs 0.91 at n=32), fit
    their own captions."""
    path = _need("sd", "unet/config.json")
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ip2p.world.sd_recipe import build_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    assert pipe.unet.dtype == torch.float32 and pipe.unet.config.in_channels == 4
    assert isinstance(pipe.scheduler, DDIMScheduler)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(pipe.scheduler.config) == public(build_scheduler().config)
    pipe.set_progress_bar_config(disable=True)
    _, caps, _ = eval_caption_items(16)
    gens = [torch.Generator().manual_seed(i) for i in range(16)]
    with torch.no_grad():
        imgs = pipe(caps, num_inference_steps=20, guidance_scale=7.5, generator=gens, output_type="pt").images
    assert imgs.shape == (16, 3, 64, 64) and torch.isfinite(imgs).all()
    fi, ft = metric_clip.encode_images(imgs.clamp(0, 1)), metric_clip.encode_texts(caps)
    own = (fi * ft).sum(-1).mean()
    shuffled = (fi * ft.roll(1, 0)).sum(-1).mean()
    assert own - shuffled >= 0.5, (float(own), float(shuffled))  # 0.91 vs 0.06 at n=32 (the card)


SHIPPED_WEIGHT_FILES = {
    "sd": ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
           "scheduler/scheduler_config.json", "model_index.json"],
    "ip2p": ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
             "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json",
             "model_index.json"],
    "clip": ["open_clip_model.safetensors", "open_clip_config.json"],
    "clip-guide": ["open_clip_model.safetensors", "open_clip_config.json"],
}


@pytest.mark.parametrize("name", sorted(SHIPPED_WEIGHT_FILES))
def test_every_shipped_weight_file_is_present(name):
    """A missing shipped file is a failure, never a skip: the package must carry its small world."""
    for rel in SHIPPED_WEIGHT_FILES[name]:
        _need(name, rel)
