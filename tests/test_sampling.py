"""The samplers on their own, with fake denoisers (k-diffusion style), independent of any UNet."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

from ip2p.sampling import (
    NoiseSource,
    denoised_from_output,
    discrete_denoiser,
    discrete_sigmas,
    get_ancestral_step,
    get_sigmas,
    model_input_scale,
    sample_euler_ancestral,
    sample_with_scheduler,
)

SCHED_CFG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, timestep_spacing="linspace")


def _sigma_table() -> torch.Tensor:
    return discrete_sigmas(EulerAncestralDiscreteScheduler(**SCHED_CFG).alphas_cumprod)


@pytest.mark.parametrize("sigma", [0.05, 1.0, 14.6])
def test_each_prediction_type_recovers_the_clean_sample(sigma):
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    x = x0 + sigma * n  # the sampler's variable
    alpha, sigma_vp = model_input_scale(sigma), sigma * model_input_scale(sigma)  # VP: x_in = alpha x0 + sigma_vp n
    outputs = {"epsilon": n, "v_prediction": alpha * n - sigma_vp * x0, "sample": x0}
    for kind, out in outputs.items():
        torch.testing.assert_close(denoised_from_output(x, sigma, out, kind), x0, atol=1e-5, rtol=1e-5)
    # and the wrong reading of an output is not the clean sample (away from sigma -> 0, where v -> eps)
    assert sigma < 1 or (denoised_from_output(x, sigma, outputs["v_prediction"], "epsilon") - x0).abs().max() > 1e-2
    with pytest.raises(ValueError, match="flow"):
        denoised_from_output(x, sigma, n, "flow")


def test_ancestral_step_keeps_the_target_variance():
    for s_from, s_to in [(14.6, 7.0), (1.0, 0.5), (0.3, 0.0)]:
        down, up = get_ancestral_step(s_from, s_to)
        assert math.isclose(down**2 + up**2, s_to**2, abs_tol=1e-9)
        assert 0 <= down <= s_to


def test_euler_ancestral_samples_a_gaussian_with_its_exact_denoiser():
    """Data N(mu, s^2) has the exact denoiser D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2);
    Euler ancestral over all 999 of the model's sigmas must reproduce the data's mean and spread (it is
    first order: 100 steps give std 0.368, 999 give 0.396)."""
    mu, s = 0.7, 0.4
    sigmas = get_sigmas(_sigma_table(), 999)
    noise = NoiseSource.from_seeds([1])
    x = noise.randn((1, 200, 100)) * sigmas[0]
    out = sample_euler_ancestral(lambda x, sg: (s**2 * x + sg**2 * mu) / (s**2 + sg**2), x, sigmas, noise)
    assert abs(out.mean().item() - mu) < 0.01
    assert abs(out.std().item() - s) < 0.01
    # a wrong denoiser (data centred at 0) gives a visibly different mean
    wrong = sample_euler_ancestral(lambda x, sg: s**2 * x / (s**2 + sg**2), noise.randn((1, 200, 100)) * sigmas[0],
                                   sigmas, NoiseSource.from_seeds([1]))
    assert abs(wrong.mean().item()) < 0.05


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])  # diffusers has no "sample" here
def test_paper_sampler_equals_diffusers_euler_ancestral_on_a_fake_model(prediction_type):
    """At 4 steps the paper's sigmas are diffusers' linspace grid; with the same model, the same
    per-sample noise and the same parameterisation the two samplers agree."""
    def model(x_in, t):  # a smooth fake network output (eps, v or x0 alike)
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[0]
        return torch.tanh(0.8 * x_in) * (0.5 + t / 2000.0)

    table = _sigma_table()
    seeds, shape = [3, 9], (4, 5, 5)
    noise = NoiseSource.from_seeds(seeds)
    sigmas = get_sigmas(table, 4)
    ours = sample_euler_ancestral(discrete_denoiser(model, table, prediction_type), noise.randn(shape) * sigmas[0],
                                  sigmas, noise)
    sched = EulerAncestralDiscreteScheduler(**SCHED_CFG, prediction_type=prediction_type)
    theirs = sample_with_scheduler(model, shape, sched, 4, NoiseSource.from_seeds(seeds))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_a_samples_noise_does_not_depend_on_its_batch_mates():
    def model(x_in, t):
        return 0.5 * x_in

    table = _sigma_table()
    sigmas = get_sigmas(table, 6)

    def run(seeds):
        noise = NoiseSource.from_seeds(seeds)
        return sample_euler_ancestral(discrete_denoiser(model, table, "epsilon"), noise.randn((2, 3, 3)) * sigmas[0],
                                      sigmas, noise)

    both = run([5, 6])
    torch.testing.assert_close(both[1:], run([6]), atol=0, rtol=0)
    torch.testing.assert_close(both[:1], run([5]), atol=0, rtol=0)
    assert (both[0] - both[1]).abs().max() > 1e-2
