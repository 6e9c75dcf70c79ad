"""Pixel metrics (L1, L2, PSNR, SSIM), their masked forms, and LPIPS: values against direct
formulas, masked metrics blind inside the mask and sensitive outside it, and LPIPS loading without
downloads (missing file named, random backbone on request, backbone read from the torch cache)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from metrics_fixtures import random_images

from ip2p.errors import ModelLoadError
from ip2p.metrics import (
    LPIPS,
    l1,
    l2,
    masked_l1_outside,
    masked_lpips_outside,
    masked_psnr_outside,
    masked_ssim_outside,
    psnr,
    ssim,
)


@pytest.fixture(scope="module")
def lp():
    return LPIPS(device="cpu", random_backbone=True)


def _direct_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM by hand: Gaussian window 11, sigma 1.5, reflect padding, C1 = 0.01^2, C2 = 0.03^2."""
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(x):
        return F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), w, groups=3)

    mu_a, mu_b = blur(a), blur(b)
    var_a = (blur(a * a) - mu_a**2).clamp_min(0)
    var_b = (blur(b * b) - mu_b**2).clamp_min(0)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return m.flatten(1).mean(1)


def test_pixel_metrics_equal_direct_formulas():
    a = random_images(3, size=32, seed=0)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(l1(a, b), (a - b).abs().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(l2(a, b), mse)
    torch.testing.assert_close(psnr(a, b), 10 * torch.log10(1 / mse))
    torch.testing.assert_close(ssim(a, b), _direct_ssim(b, a), atol=1e-5, rtol=0)
    assert torch.isinf(psnr(a, a)).all() and torch.allclose(ssim(a, a), torch.ones(3))
    # per item: one item's value does not depend on its batch mates
    torch.testing.assert_close(ssim(a[1:2], b[1:2]), ssim(a, b)[1:2])


def test_pixel_metrics_refuse_bad_inputs():
    a = random_images(2, size=32)
    with pytest.raises(ValueError, match=r"image: values must lie in \[0, 1\]"):
        l1(a, a * 2 - 1)
    with pytest.raises(ValueError, match="image: shape .* differs from reference"):
        psnr(a, random_images(2, size=16))
    with pytest.raises(ValueError, match="mask: expected dtype torch.bool"):
        masked_l1_outside(a, a, torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 32, 32\)"):
        masked_l1_outside(a, a, torch.zeros(2, 16, 16, dtype=torch.bool))


def _box_mask(n=2, size=64, lo=16, hi=48):
    m = torch.zeros(n, size, size, dtype=torch.bool)
    m[:, lo:hi, lo:hi] = True
    return m


def test_masked_metrics_ignore_changes_inside_the_mask(lp):
    a = random_images(2, size=64, seed=2)
    b = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    mask = _box_mask()
    changed = b.clone()
    changed[:, :, 16:48, 16:48] = torch.rand(2, 3, 32, 32)  # anything at all inside the mask, up to its edge
    for fn in (masked_l1_outside, masked_psnr_outside, masked_ssim_outside):
        assert torch.equal(fn(a, changed, mask), fn(a, b, mask)), fn.__name__
    torch.testing.assert_close(masked_lpips_outside(a, changed, mask, lp), masked_lpips_outside(a, b, mask, lp))
    # while the unmasked metrics do see it
    assert (ssim(a, changed) < ssim(a, b)).all() and (lp(a, changed) > lp(a, b)).all()


def test_masked_metrics_see_a_change_outside_the_mask_normalised_by_its_area(lp):
    a = random_images(2, size=64, seed=4)
    mask = _box_mask()
    outside_area = 64 * 64 - 32 * 32
    b = a.clone()
    b[:, :, 0:4, 0:8] = (b[:, :, 0:4, 0:8] + 0.5) % 1.0  # 32 pixels outside the mask
    diff = (b - a).abs()[:, :, 0:4, 0:8]
    expected_l1 = diff.sum(dim=(1, 2, 3)) / (3 * outside_area)
    torch.testing.assert_close(masked_l1_outside(a, b, mask), expected_l1)
    expected_mse = (diff**2).sum(dim=(1, 2, 3)) / (3 * outside_area)
    torch.testing.assert_close(masked_psnr_outside(a, b, mask), 10 * torch.log10(1 / expected_mse))
    assert (masked_ssim_outside(a, b, mask) < 1).all()
    assert (masked_lpips_outside(a, b, mask, lp) > 0).all()
    # an unchanged outside is perfect
    assert torch.isinf(masked_psnr_outside(a, a, mask)).all()
    assert torch.equal(masked_ssim_outside(a, a, mask), torch.ones(2))


def test_masked_metrics_edge_cases():
    a = random_images(2, size=64, seed=5)
    b = random_images(2, size=64, seed=6)
    none = torch.zeros(64, 64, dtype=torch.bool)  # one [H, W] mask for the batch
    torch.testing.assert_close(masked_l1_outside(a, b, none), l1(a, b))
    torch.testing.assert_close(masked_psnr_outside(a, b, none), psnr(a, b))
    torch.testing.assert_close(masked_ssim_outside(a, b, none), ssim(a, b), atol=1e-6, rtol=0)
    everything = torch.zeros(2, 64, 64, dtype=torch.bool)
    everything[1] = True  # item 1 has no outside: NaN, item 0 unaffected
    out = masked_l1_outside(a, b, everything)
    assert math.isnan(out[1]) and out[0] == l1(a, b)[0]


def test_lpips_missing_backbone_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as e:
        LPIPS(device="cpu")
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(ModelLoadError, match="vgg16-397923af.pth"):
        LPIPS(net="vgg", device="cpu")
    assert not (tmp_path / "hub" / "checkpoints").exists() or not any((tmp_path / "hub" / "checkpoints").iterdir())


def test_lpips_random_backbone_values(lp):
    a = random_images(2, size=64, seed=7)
    b = random_images(2, size=64, seed=8)
    assert torch.equal(lp(a, a), torch.zeros(2))
    d = lp(a, b)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(lp(b, a), d)
    assert lp(a, b, spatial=True).shape == (2, 64, 64)
    assert lp.spec()["backbone"] == "random"
    with pytest.raises(ValueError, match="image_b"):
        lp(a, b * 2 - 1)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lpips_reads_the_backbone_from_the_torch_cache(tmp_path, monkeypatch, lp):
    import torchvision.models as tvm

    torch.manual_seed(0)
    state = tvm.alexnet(weights=None).state_dict()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = LPIPS(device="cpu")
    assert torch.equal(m.model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(m.model.net.slice5, "10").weight, state["features.10.weight"])
    assert m.spec()["backbone"] == str(ckpt / "alexnet-owt-7be5be79.pth")
    assert m.spec()["weights_hash"] != lp.spec()["weights_hash"]
    # the package's calibrated linear layers are loaded, not random
    import lpips as lpips_pkg

    ref = lpips_pkg.LPIPS(net="alex", pnet_rand=True, verbose=False)
    assert torch.equal(m.model.lin0.model[-1].weight, ref.lin0.model[-1].weight)


def test_ssim_of_an_image_with_itself_is_exactly_one_on_flat_scenes():
    """float32 torchmetrics gives 0.9997 for a flat world scene against itself (variance cancellation);
    the metric must say the images are identical."""
    from ip2p.metrics import pixel
    from ip2p.data.world.examples import world_examples

    x = torch.stack([e.load_input() for e in list(world_examples("test", 4))])
    assert torch.equal(pixel.ssim(x, x.clone()), torch.ones(4))
    full = pixel.ssim_map(x, x.clone())
    assert full.dtype == torch.float32 and torch.equal(full, torch.ones_like(full))
    y = x.clone()
    y[:, :, 10:20, 10:20] = 1 - y[:, :, 10:20, 10:20]
    assert (pixel.ssim(x, y) < 0.99).all()
