"""Opt-in training knobs beside the paper's defaults: timestep sampling and Min-SNR weighting."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ip2p.train.trainer import min_snr_weights, training_timesteps


def _sd_scheduler(prediction_type="epsilon"):
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type)


def test_uniform_timesteps_are_floor_u_times_T():
    u = torch.tensor([0.0, 0.0005, 0.4999, 0.9999999])
    assert training_timesteps(u, 1000).tolist() == [0, 0, 499, 999]


def test_cubic_timesteps_follow_one_minus_u_cubed():
    u = torch.tensor([0.0, 0.5, 0.9, 0.99999])
    assert training_timesteps(u, 1000, "cubic").tolist() == [999, 875, 271, 0]
    draws = training_timesteps(torch.rand(200_000, generator=torch.Generator().manual_seed(0)), 1000, "cubic")
    # P(t >= 900) = P(u^3 <= 0.1) = 0.1^(1/3) = 0.464; uniform would give 0.1
    assert abs(float((draws >= 900).float().mean()) - 0.1 ** (1 / 3)) < 0.005
    assert int(draws.min()) >= 0 and int(draws.max()) <= 999
    with pytest.raises(ValueError, match="timestep_sampling"):
        training_timesteps(u, 1000, "cosine")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_the_formula(prediction_type):
    sched = _sd_scheduler(prediction_type)
    t = torch.tensor([0, 50, 300, 700, 999])
    ac = sched.alphas_cumprod.double()[t]
    snr = ac / (1 - ac)
    want = snr.clamp(max=5.0) / (snr + 1 if prediction_type == "v_prediction" else snr)
    got = min_snr_weights(sched, t, 5.0)
    assert torch.allclose(got.double(), want, rtol=1e-6)
    if prediction_type == "epsilon":  # high-SNR (nearly clean) steps are down-weighted, noisy ones kept at 1
        assert got[0] < 0.02 and got[-1] == 1.0


def test_loss_with_snr_gamma_is_the_weighted_per_sample_mse(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ip2p.train.tiny import make_tiny_sd
    from ip2p.train.trainer import instruct_pix2pix_loss
    from ip2p.train.unet_init import widen_conv_in

    folder = make_tiny_sd(tmp_path / "sd", seed=0)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), 8)
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    g = torch.Generator().manual_seed(0)
    batch = {"input": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "edited": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
             "r": torch.tensor([0.5, 0.5]), "t_unit": torch.tensor([0.02, 0.7]),
             "noise": torch.randn(2, 4, 16, 16, generator=g), "posterior_eps": torch.randn(2, 4, 16, 16, generator=g)}
    text, null = torch.randn(2, 16, 16, generator=g), torch.zeros(1, 16, 16)
    with torch.no_grad():
        plain = [instruct_pix2pix_loss(unet, vae, sched, {k: v[i : i + 1] for k, v in batch.items()}, text[i : i + 1],
                                       null, 0.05, torch.float32) for i in range(2)]
        weighted = instruct_pix2pix_loss(unet, vae, sched, batch, text, null, 0.05, torch.float32, snr_gamma=5.0)
        cubic = instruct_pix2pix_loss(unet, vae, sched, batch, text, null, 0.05, torch.float32, timestep_sampling="cubic")
        default = instruct_pix2pix_loss(unet, vae, sched, batch, text, null, 0.05, torch.float32)
    w = min_snr_weights(sched, torch.tensor([20, 700]), 5.0)
    assert torch.allclose(weighted, (w[0] * plain[0] + w[1] * plain[1]) / 2, rtol=1e-5)
    assert torch.allclose(default, (plain[0] + plain[1]) / 2, rtol=1e-5)
    assert not torch.allclose(weighted, default, rtol=1e-3)
    assert not torch.allclose(cubic, default, rtol=1e-3)  # other timesteps (979 and 657), other loss


def test_bad_weighting_options_are_refused():
    from ip2p.errors import SpecError
    from ip2p.train.config import TrainConfig

    for kw, field in (({"snr_gamma": 0.0}, "snr_gamma"), ({"timestep_sampling": "cosine"}, "timestep_sampling")):
        with pytest.raises(SpecError, match=field):
            TrainConfig(base="b", data="d", out="o", **kw).validate()


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedule_follows_its_formula_after_warm_up(schedule):
    import math

    from ip2p.train.config import TrainConfig
    from ip2p.train.trainer import make_lr_scheduler

    cfg = TrainConfig(base="b", data="d", out="o", lr=0.5, lr_warmup_steps=4, max_steps=20, lr_schedule=schedule)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_lr_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.max_steps + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    decay = {"constant": lambda p: 1.0, "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p}
    for k, lr in enumerate(lrs):
        want = cfg.lr * (k / 4 if k < 4 else decay[schedule]((k - 4) / 16))
        assert lr == pytest.approx(want, abs=1e-9), (schedule, k)
    assert lrs[20] == pytest.approx(0.0 if schedule != "constant" else 0.5, abs=1e-9)


def test_unknown_lr_schedule_is_refused():
    from ip2p.errors import SpecError
    from ip2p.train.config import TrainConfig

    with pytest.raises(SpecError, match="lr_schedule"):
        TrainConfig(base="b", data="d", out="o", lr_schedule="exponential").validate()
