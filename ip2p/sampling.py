"""Samplers as pure functions of (denoiser, x, sigmas, noise source), k-diffusion style.

- ``sample_euler_ancestral``: the sampler of the paper's code (k-diffusion
  ``sample_euler_ancestral``) over the model's discrete sigmas (``discrete_sigmas`` /
  ``get_sigmas``), starting from ``x = noise * sigmas[0]``.
- ``sample_with_scheduler``: any diffusers scheduler through one adapter.

Noise comes from a ``NoiseSource``: one ``torch.Generator`` per sample, drawn in the order
diffusers draws (initial latent first, then one draw per step), so a sample's noise depends only
on its own seed, never on its batch mates (DESIGN invariant 1).
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch

__all__ = [
    "NoiseSource",
    "discrete_sigmas",
    "get_sigmas",
    "sigma_to_t",
    "t_to_sigma",
    "get_ancestral_step",
    "to_d",
    "denoised_from_output",
    "model_input_scale",
    "discrete_denoiser",
    "sample_euler_ancestral",
    "sample_with_scheduler",
    "scheduler_from",
]


class NoiseSource:
    """Per-sample Gaussian noise: sample ``i`` draws from ``generators[i]`` (CPU generators,
    as ``torch.Generator().manual_seed(seed)``), in ``dtype``, then moves to ``device``."""

    def __init__(self, generators: Sequence[torch.Generator], dtype=torch.float32, device="cpu"):
        self.generators = list(generators)
        self.dtype = dtype
        self.device = torch.device(device)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], dtype=torch.float32, device="cpu") -> "NoiseSource":
        return cls([torch.Generator().manual_seed(int(s)) for s in seeds], dtype=dtype, device=device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, sample_shape: Sequence[int]) -> torch.Tensor:
        """``[B, *sample_shape]``: one ``torch.randn((1, *sample_shape))`` per generator."""
        draws = [
            torch.randn((1, *sample_shape), generator=g, device=g.device, dtype=self.dtype)
            for g in self.generators
        ]
        return torch.cat(draws).to(self.device)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"noise for a batch of {x.shape[0]} from {len(self.generators)} generators")
        return self.randn(x.shape[1:]).to(dtype=x.dtype)


# ---------------------------------------------------------------- discrete-time sigmas

def discrete_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The model's training sigmas: ``sqrt((1 - abar_t) / abar_t)`` for t = 0..T-1 (increasing)."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt().float()


def t_to_sigma(t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep -> sigma, interpolating log-sigma linearly between integer steps."""
    log_sigmas = sigmas.log()
    t = t.float().clamp(0, len(sigmas) - 1)
    low = t.floor().long()
    high = t.ceil().long()
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def sigma_to_t(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Inverse of ``t_to_sigma``: sigma -> fractional timestep (clamped to [0, T-1])."""
    log_sigmas = sigmas.log().to(sigma.device)
    log_sigma = sigma.float().log()
    # index of the last table entry <= log_sigma, kept so that [low, low+1] is a valid interval
    low = (log_sigmas[None, :] <= log_sigma.reshape(-1, 1)).sum(dim=1) - 1
    low = low.clamp(0, len(sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((log_sigma.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
    return (low.float() + w).reshape(sigma.shape)


def get_sigmas(sigmas: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` sampling sigmas at timesteps ``linspace(T-1, 0, n)``, then a final 0 (n+1 values)."""
    if n < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {n}")
    t = torch.linspace(len(sigmas) - 1, 0, n)
    return torch.cat([t_to_sigma(t, sigmas), torch.zeros(1)])


# ---------------------------------------------------------------- Euler ancestral

def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step to ``sigma_to`` into a deterministic part (``sigma_down``) and fresh noise
    (``sigma_up``) so that ``sigma_down**2 + sigma_up**2 == sigma_to**2``."""
    if sigma_to == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


# ---------------------------------------------------------------- discrete-time denoisers

def model_input_scale(sigma: float) -> float:
    """``c_in = 1 / sqrt(sigma^2 + 1)``: the sampler's ``x`` (data + sigma * noise) scaled to the
    variance-preserving input the UNet was trained on (k-diffusion's discrete denoisers)."""
    return 1.0 / math.sqrt(sigma**2 + 1.0)


def denoised_from_output(x: torch.Tensor, sigma: float, out: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The denoised estimate from a model output at noise level ``sigma``, for the sampler's
    ``x = data + sigma * noise`` (k-diffusion's ``DiscreteEpsDDPMDenoiser`` and ``DiscreteVDDPMDenoiser``):

    - ``epsilon``:      ``x - sigma * out``
    - ``v_prediction``: ``x / (sigma^2 + 1) - out * sigma / sqrt(sigma^2 + 1)``
    - ``sample``:       ``out`` (the model predicts the clean latent)

    Each is affine in ``out`` with the same ``x`` term, so guidance (an affine combination with
    weights summing to 1) gives the same result applied before or after this conversion."""
    if prediction_type == "epsilon":
        return x - sigma * out
    if prediction_type == "v_prediction":
        return x / (sigma**2 + 1.0) - out * (sigma / math.sqrt(sigma**2 + 1.0))
    if prediction_type == "sample":
        return out
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample")


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def discrete_denoiser(model: ModelFn, sigma_table: torch.Tensor, prediction_type: str, device="cpu") -> Denoiser:
    """``denoise(x, sigma)`` from a model trained on discrete timesteps: ``model(x * c_in, t(sigma))``
    (its raw output: eps, v or the clean sample) converted by ``denoised_from_output``."""
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample")

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = sigma_to_t(torch.tensor([sigma]), sigma_table).to(device)
        return denoised_from_output(x, sigma, model(x * model_input_scale(sigma), t), prediction_type)

    return denoise


def sample_euler_ancestral(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise: NoiseSource,
    *,
    eta: float = 1.0,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Ancestral Euler over ``sigmas``. ``x`` is already scaled by ``sigmas[0]``;
    ``denoise(x, sigma)`` returns the denoised estimate."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, s)
        sigma_down, sigma_up = get_ancestral_step(s, s_next, eta)
        x = x + to_d(x, s, denoised) * (sigma_down - s)
        if s_next > 0:
            x = x + noise.like(x) * sigma_up
        if callback is not None:
            callback(i, x)
    return x


# ---------------------------------------------------------------- diffusers schedulers

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fresh_scheduler(scheduler):
    """An independent copy of a diffusers scheduler (schedulers keep per-run step state)."""
    return type(scheduler).from_config(scheduler.config)


def scheduler_from(scheduler, base_config):
    """A diffusers scheduler given as an instance (returned as is) or a class name such as
    ``"DDIMScheduler"`` (built from ``base_config``, the model's own scheduler config)."""
    if not isinstance(scheduler, str):
        return scheduler
    import diffusers

    cls = getattr(diffusers, scheduler, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"unknown diffusers scheduler {scheduler!r}")
    return cls.from_config(base_config)


def sample_with_scheduler(
    eps_model: EpsModel,
    latent_shape: Sequence[int],
    scheduler,
    num_inference_steps: int,
    noise: NoiseSource,
    *,
    device="cpu",
    dtype=torch.float32,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run a diffusers scheduler: initial latent ``noise * init_noise_sigma``, then per step
    ``scale_model_input`` -> ``eps_model(x_in, t)`` -> ``step`` (with the per-sample generators
    where the scheduler draws noise). Mirrors diffusers' pipelines' loop exactly."""
    sched = fresh_scheduler(scheduler)
    sched.set_timesteps(num_inference_steps, device=device)
    x = noise.randn(latent_shape).to(device=device, dtype=dtype) * sched.init_noise_sigma
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    extra = {"generator": noise.generators} if takes_generator else {}
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)
        eps = eps_model(x_in, t)
        x = sched.step(eps, t, x, return_dict=False, **extra)[0]
        if callback is not None:
            callback(i, x)
    return x
