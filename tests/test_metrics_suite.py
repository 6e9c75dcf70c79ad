"""MetricSuite: the harness's one call gives the documented columns, each equal to the metric it
names, and a spec that traces every column; the CLIP throughput benchmark runs on a tiny model."""
from __future__ import annotations

import json

import pytest
import torch
from metrics_fixtures import make_tiny_clip_folder, random_images

from ip2p.metrics import LPIPS, ClipSimilarity, MetricSuite, l1, masked_lpips_outside, masked_ssim_outside, psnr, ssim

T0 = ["red disk", "blue square"]
T1 = ["red disk, snow", "yellow square"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    folder = make_tiny_clip_folder(tmp_path_factory.mktemp("suite"), "clip")
    return MetricSuite(clip=ClipSimilarity(str(folder), device="cpu"), lpips=LPIPS(device="cpu", random_backbone=True))


def test_columns_and_values(suite):
    x = random_images(2, size=64, seed=0)
    y = random_images(2, size=64, seed=1)
    target = random_images(2, size=64, seed=2)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[:, 8:40, 8:40] = True
    out = suite(x, y, T0, T1, targets=target, masks=mask)
    expected_cols = [
        "clip_sim_0", "clip_sim_1", "clip_sim_direction", "clip_sim_image", "lpips", "l1", "l2", "psnr", "ssim",
        "target_l1", "target_l2", "target_lpips", "target_clip_image",
        "masked_l1_outside", "masked_psnr_outside", "masked_ssim_outside", "masked_lpips_outside",
    ]
    assert list(out) == expected_cols == suite.columns(targets=True, masks=True)
    assert all(v.shape == (2,) and v.dtype == torch.float32 for v in out.values())

    sims = suite.clip(x, y, T0, T1)
    for k in ("sim_0", "sim_1", "sim_direction", "sim_image"):
        assert torch.equal(out[f"clip_{k}"], sims[k])
    assert torch.equal(out["psnr"], psnr(x, y)) and torch.equal(out["ssim"], ssim(x, y))
    assert torch.equal(out["target_l1"], l1(target, y))
    assert torch.allclose(out["target_l2"], (y - target).square().mean((1, 2, 3)))
    assert torch.equal(out["target_lpips"], suite.lpips(target, y))
    assert torch.equal(out["target_clip_image"], suite.clip.image_similarity(target, y))
    assert torch.equal(out["masked_ssim_outside"], masked_ssim_outside(x, y, mask))
    assert torch.equal(out["masked_lpips_outside"], masked_lpips_outside(x, y, mask, suite.lpips))
    # the edited image compared with itself as target: perfect
    same = suite(x, y, T0, T1, targets=y)
    assert torch.all(same["target_l1"] == 0) and torch.allclose(same["target_clip_image"], torch.ones(2))

    bare = suite(x, y)  # no captions: only caption-free columns
    assert list(bare) == suite.columns(captions=False)
    assert "clip_sim_direction" not in bare and torch.equal(bare["clip_sim_image"], out["clip_sim_image"])
    with pytest.raises(ValueError, match="text_0/text_1"):
        suite(x, y, T0, None)
    with pytest.raises(ValueError, match="targets: batch size 1"):
        suite(x, y, T0, T1, targets=target[:1])


def test_missing_captions_give_nan_not_a_similarity_to_empty_text(suite):
    x = random_images(3, size=64, seed=0)
    y = random_images(3, size=64, seed=1)
    t0, t1 = ["a red square", "", "a red square"], ["a blue square", "a blue square", " "]
    out = suite(x, y, t0, t1)
    full = suite(x, y, [T0[0]] * 3, [T1[0]] * 3)
    # item 0 has both captions; item 1 lacks the input caption; item 2 the output caption
    assert torch.isfinite(out["clip_sim_0"][0]) and torch.isfinite(out["clip_sim_direction"][0])
    assert torch.isnan(out["clip_sim_0"][1]) and torch.isnan(out["clip_sim_direction"][1])
    assert torch.isfinite(out["clip_sim_1"][1])
    assert torch.isnan(out["clip_sim_1"][2]) and torch.isnan(out["clip_sim_direction"][2])
    assert torch.isfinite(out["clip_sim_0"][2])
    assert torch.equal(out["clip_sim_image"], full["clip_sim_image"])  # image-only columns untouched


def test_spec_traces_every_column(suite, tmp_path):
    spec = suite.spec()
    out = suite(random_images(2, size=64), random_images(2, size=64, seed=1), T0, T1,
                targets=random_images(2, size=64, seed=2), masks=torch.zeros(64, 64, dtype=torch.bool))
    for col in out:
        section = spec["columns"][col].split("+")[0]
        assert spec[section] is not None, col
    clip = spec["clip"]
    assert clip["weights_hash"] == suite.clip.clip.identity["weights_hash"]
    assert clip["preprocess"]["mode"] == "paper" and clip["caption_source"] == "input_caption/output_caption"
    assert spec["lpips"]["backbone"] == "random" and len(spec["lpips"]["weights_hash"]) == 16
    json.dumps(spec)  # goes into manifests and rows as JSON
    assert suite.spec()["spec_hash"] == spec["spec_hash"]
    compat = MetricSuite(clip=ClipSimilarity.from_loaded(suite.clip.clip, preprocess="official-compat"), lpips=suite.lpips)
    assert compat.spec()["spec_hash"] != spec["spec_hash"]


def test_clip_throughput_benchmark_runs_on_a_tiny_model(tmp_path, capsys):
    from bench.perf.clip_throughput import main

    out = tmp_path / "clip.json"
    assert main(["--model", "tiny", "--device", "cpu", "--batch", "4", "--iters", "2", "--warmup", "1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["batch"] == 4 and rec["iters"] == 2 and rec["img_per_s"] > 0 and rec["precision"] == "fp32"
    assert abs(rec["img_per_s"] - 4 * 2 / rec["seconds"]) < 1e-6 * rec["img_per_s"]
    assert rec["versions"]["open_clip"] and rec["device"]
    if not torch.cuda.is_available():
        assert main(["--out", str(tmp_path / "skip.json")]) == 0
        assert "SKIP" in capsys.readouterr().out and not (tmp_path / "skip.json").exists()
