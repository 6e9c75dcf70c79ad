"""Benchmark metrics (DINO similarity, PIE-Bench structure distance, background metrics, CLIP
scores) each equal an independent computation from its published definition, on small random
backbones built here and loaded by path through the project's loaders; missing weights are named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_fixtures import make_tiny_clip_folder, random_images
from PIL import Image

from ip2p.errors import ModelLoadError
from ip2p.metrics import LPIPS, ClipSimilarity
from ip2p.metrics.benchmark_metrics import DIRECTION, BenchmarkMetrics, clip_score, pie_unedited
from ip2p.metrics.dino import DIRECTION as DINO_DIRECTION
from ip2p.metrics.dino import dino_similarity, load_dino, structure_distance

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def make_tiny_dino_folder(root, *, image_size=224, patch=16, hidden=24, layers=2, heads=2, seed=0):
    """A random transformers ViTModel (DINO's architecture, tiny) saved with save_pretrained."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=image_size, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                    num_attention_heads=heads, intermediate_size=2 * hidden, qkv_bias=True)
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # spread the weights so different images give clearly different features
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return make_tiny_dino_folder(tmp_path_factory.mktemp("dino") / "dino")


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _scorer_dino_pixels(x: torch.Tensor) -> torch.Tensor:
    """MagicBrush's transform written out by hand: PIL bicubic resize of the shorter side to 256,
    centre crop 224 (torchvision's rounding), /255, ImageNet mean/std."""
    img = Image.fromarray(_u8(x))
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BICUBIC)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    arr = np.asarray(img, dtype=np.float64)[top:top + 224, left:left + 224] / 255.0
    arr = (arr - MEAN) / STD
    return torch.from_numpy(arr).permute(2, 0, 1).float()


def test_dino_similarity_is_cosine_of_cls_after_the_scorers_transform(dino_dir):
    from transformers import ViTModel

    dino = load_dino(str(dino_dir), "cpu")
    ref_model = ViTModel.from_pretrained(dino_dir, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 300, 260, generator=g)  # non-square: the shorter side is resized
    b = torch.rand(2, 3, 300, 260, generator=g)
    b[1] = a[1]
    got = dino_similarity(a, b, dino)
    want = []
    for i in range(2):
        with torch.no_grad():
            fa = ref_model(pixel_values=_scorer_dino_pixels(a[i])[None]).last_hidden_state[0, 0].double().numpy()
            fb = ref_model(pixel_values=_scorer_dino_pixels(b[i])[None]).last_hidden_state[0, 0].double().numpy()
        want.append(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb)))  # 1 - scipy cosine distance
    assert np.allclose(got.numpy(), want, atol=1e-5)
    assert got[1] == pytest.approx(1.0, abs=1e-6) and got[0] < 0.999
    assert DINO_DIRECTION["target_dino"] == "higher" and DINO_DIRECTION["structure_distance"] == "lower"


def test_structure_distance_is_mse_of_key_self_similarities(dino_dir):
    from torchvision import transforms
    from transformers import ViTModel

    dino = load_dino(str(dino_dir), "cpu")
    ref_model = ViTModel.from_pretrained(dino_dir, add_pooling_layer=False).eval()
    src, edited = random_images(1, size=96, seed=3), random_images(1, size=96, seed=4)

    def keys_self_sim(x):  # PnPInversion: x in [0,255], Resize(224, max_size=480), ImageNet norm, last block keys
        tf = transforms.Compose([transforms.Resize(224, max_size=480), transforms.Normalize(MEAN.tolist(), STD.tolist())])
        grabbed = []
        key_layers = [m for n, m in ref_model.named_modules() if n.endswith(("k_proj", "attention.key"))]
        h = key_layers[-1].register_forward_hook(lambda m, i, o: grabbed.append(o))
        with torch.no_grad():
            ref_model(pixel_values=tf(x * 255.0), interpolate_pos_encoding=True)
        h.remove()
        k = grabbed[0][0].double().numpy()  # [T, D], heads concatenated
        n = np.linalg.norm(k, axis=1, keepdims=True)
        return (k @ k.T) / np.maximum(n @ n.T, 1e-8)

    want = np.mean((keys_self_sim(edited) - keys_self_sim(src)) ** 2)
    got = structure_distance(src, edited, dino)
    assert got.shape == (1,) and got[0].item() == pytest.approx(want, rel=1e-4)
    assert structure_distance(src, src, dino)[0].item() == pytest.approx(0.0, abs=1e-10)
    # pixel_scale is part of the definition: [0, 1] input gives a different value
    assert structure_distance(src, edited, dino, pixel_scale=1.0)[0].item() != pytest.approx(want, rel=1e-3)


def test_pie_background_metrics_zero_fill_and_whole_image_mean():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    lp = LPIPS("squeeze", device="cpu", random_backbone=True)
    src, edited = random_images(2, size=48, seed=5), random_images(2, size=48, seed=6)
    mask = torch.zeros(2, 48, 48, dtype=torch.bool)
    mask[0, 10:30, 5:40] = True
    mask[1] = True  # nothing unedited: NaN, as the scorer's "nan"
    got = pie_unedited(src, edited, mask, lp)
    keep = (~mask[0]).numpy()[..., None].astype(np.float32)
    a, b = src[0].permute(1, 2, 0).numpy() * keep, edited[0].permute(1, 2, 0).numpy() * keep
    mse = float(np.mean((a - b) ** 2))
    assert got["pie_mse_unedit"][0].item() == pytest.approx(mse, rel=1e-5)
    assert got["pie_psnr_unedit"][0].item() == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-5)
    ta, tb = torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(b).permute(2, 0, 1)[None]
    assert got["pie_ssim_unedit"][0].item() == pytest.approx(StructuralSimilarityIndexMeasure(data_range=1.0)(tb, ta).item(), rel=1e-5)
    with torch.no_grad():
        want_lp = lp.model(ta * 2 - 1, tb * 2 - 1).item()
    assert got["pie_lpips_unedit"][0].item() == pytest.approx(want_lp, rel=1e-5)
    assert all(torch.isnan(v[1]) for v in got.values())
    assert DIRECTION["pie_psnr_unedit"] == "higher" and DIRECTION["pie_mse_unedit"] == "lower"


def test_clip_scores_whole_and_edited_region(tmp_path):
    clip = ClipSimilarity(str(make_tiny_clip_folder(tmp_path, "clip")), preprocess="open_clip", device="cpu")
    images = random_images(3, size=40, seed=7)
    texts = ["a red square", "a blue disk", ""]
    got = clip_score(clip, images, texts)
    with torch.no_grad():
        fi = clip.encode_images(images[:2])
        ft = clip.encode_texts(texts[:2])
    cos = (fi * ft).sum(-1) / (fi.norm(dim=-1) * ft.norm(dim=-1))
    assert torch.allclose(got[:2], 100 * cos.clamp_min(0), atol=1e-4)
    assert torch.isnan(got[2])  # no caption: missing, not 0
    # the edited-region score sees uint8(image * mask): outside the mask is black
    mask = torch.zeros(3, 40, 40, dtype=torch.bool)
    mask[:, 5:25, 10:30] = True
    bm = BenchmarkMetrics(pie=True, clip=clip)
    cols = bm(images, images, texts, masks=mask)
    region = torch.from_numpy(np.stack([_u8(images[i]) * mask[i].numpy()[..., None] for i in range(3)]))
    region = region.permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(cols["pie_clip_edited"][:2], clip_score(clip, region, texts)[:2], atol=1e-5)
    assert torch.allclose(cols["pie_clip_whole"][:2], got[:2]) and torch.isnan(cols["pie_clip_edited"][2])


def test_missing_dino_weights_name_the_missing_file(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"models--facebook--dino-vits16.*config\.json|config\.json.*models--facebook--dino-vits16"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        load_dino("facebook/dino-vits16-not-cached", "cpu")
    folder = make_tiny_dino_folder(tmp_path / "broken", image_size=32, hidden=8, layers=1)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_dino(str(folder), "cpu")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="facebookresearch_dino_main.hubconf.py"):
        load_dino("torchhub:facebookresearch/dino:main/dino_vits16", "cpu")


def test_lpips_squeeze_reads_its_backbone_from_the_torch_cache(tmp_path, monkeypatch):
    import torchvision.models as tvm

    from ip2p.metrics.lpips_metric import backbone_file

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = backbone_file("squeeze")
    with pytest.raises(ModelLoadError, match=path.name):
        LPIPS("squeeze", device="cpu")
    torch.manual_seed(1)
    tv = tvm.squeezenet1_1(weights=None)
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    lp = LPIPS("squeeze", device="cpu")
    got = dict(lp.model.net.named_parameters())
    # lpips keeps torchvision's feature indices inside its slices
    assert torch.equal(got["slice1.0.weight"], tv.features[0].weight)
    assert torch.equal(got["slice7.12.expand3x3.weight"], tv.features[12].expand3x3.weight)
