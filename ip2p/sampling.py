"""Samplers as pure functions of (denoiser, x, sigmas, noise source), k-diffusion style.

- ``sample_euler_ancestral``: the sampler of the paper's code (k-diffusion
  ``sample_euler_ancestral``) over the model's discrete sigmas (``discrete_sigmas`` /
  ``get_sigmas``), starting from ``x = noise * sigmas[0]``.
- ``sample_with_scheduler``: any diffusers scheduler through one adapter.

These are the only sampling loops of the package: every method (the editor's eager and fast paths,
post-edit, the pair generator, the profiler) drives them with its own denoiser and noise source.
What differs between methods lives in those two and in two hooks: ``callback(i, x)`` after each
step (it may return a replacement ``x``: post-edit's latent blend) and ``region(name)``, a context
manager factory around the sampler update (the profiler's timers; a no-op by default).

Noise comes from a ``NoiseSource``: one ``torch.Generator`` per sample, drawn in the order
diffusers draws (initial latent first, then one draw per step), so a sample's noise depends only
on its own seed, never on its batch mates (DESIGN invariant 1). ``PredrawnNoise`` is the same
numbers drawn ahead of the loop and moved to the device in one copy (the fast path).
"""
from __future__ import annotations

import inspect
import math
from contextlib import nullcontext
from typing import Callable, ContextManager, Sequence

import torch

__all__ = [
    "NoiseSource",
    "PredrawnNoise",
    "predraw_noise",
    "no_region",
    "schedule_timesteps",
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


def predraw_noise(seeds: Sequence[int], sample_shape: Sequence[int], n_draws: int, *,
                  dtype: torch.dtype = torch.float32, pin: bool = False) -> torch.Tensor:
    """``[n_draws, B, *sample_shape]``: draw ``k`` of sample ``i`` is the ``k``-th
    ``torch.randn((1, *sample_shape))`` of ``torch.Generator().manual_seed(seeds[i])``, exactly
    what ``NoiseSource.from_seeds(seeds)`` returns on its ``k``-th call (draw 0: the initial
    latent, then one per noisy step). CPU; pinned when ``pin`` (for a non-blocking copy)."""
    shape = tuple(int(s) for s in sample_shape)
    out = torch.empty((n_draws, len(seeds), *shape), dtype=dtype, pin_memory=pin)
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        for k in range(n_draws):
            out[k, i].copy_(torch.randn((1, *shape), generator=g, dtype=dtype)[0])
    return out


class PredrawnNoise:
    """A noise source whose draws were made before the loop: call ``k`` (``randn`` or ``like``)
    returns ``draws[k]``, already on the device. ``from_seeds`` draws exactly what
    ``NoiseSource.from_seeds`` would draw, on the CPU, and moves them in one non-blocking copy from
    pinned memory, so the loop neither draws nor copies from the host (no GPU synchronisation)."""

    def __init__(self, draws: torch.Tensor):
        self.draws = draws
        self.used = 0

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], sample_shape: Sequence[int], n_draws: int, *,
                   dtype=torch.float32, device="cpu") -> "PredrawnNoise":
        device = torch.device(device)
        pin = device.type == "cuda"
        return cls(predraw_noise(seeds, sample_shape, n_draws, dtype=dtype, pin=pin).to(device, non_blocking=True))

    @classmethod
    def for_euler_ancestral(cls, seeds: Sequence[int], sample_shape: Sequence[int], sigmas: torch.Tensor, *,
                            dtype=torch.float32, device="cpu") -> "PredrawnNoise":
        """The draws ``sample_euler_ancestral`` over ``sigmas`` makes: the initial latent, then one
        per step that ends above sigma 0."""
        noisy = int((sigmas[1:] > 0).sum())
        return cls.from_seeds(seeds, sample_shape, 1 + noisy, dtype=dtype, device=device)

    def __len__(self) -> int:
        return int(self.draws.shape[1])

    def randn(self, sample_shape: Sequence[int]) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise RuntimeError(f"PredrawnNoise: all {len(self.draws)} pre-drawn draws are used")
        if tuple(self.draws.shape[2:]) != tuple(sample_shape):
            raise ValueError(f"PredrawnNoise: draws of shape {tuple(self.draws.shape[2:])}, asked for {tuple(sample_shape)}")
        out = self.draws[self.used]
        self.used += 1
        return out

    def like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"noise for a batch of {x.shape[0]} from {len(self)} pre-drawn samples")
        return self.randn(x.shape[1:]).to(dtype=x.dtype)


def no_region(name: str) -> ContextManager:
    """The default ``region`` hook: times nothing."""
    return nullcontext()


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


def schedule_timesteps(sigma_table: torch.Tensor, sigmas: Sequence[float], device="cpu") -> torch.Tensor:
    """``[n, 1]``: row ``i`` is ``sigma_to_t(tensor([sigmas[i]]))``, exactly what the denoiser
    computes at that sigma, moved to ``device`` in one (non-blocking, pinned on CUDA) copy."""
    rows = torch.stack([sigma_to_t(torch.tensor([float(s)]), sigma_table) for s in sigmas])
    device = torch.device(device)
    if device.type == "cuda":
        rows = rows.pin_memory()
    return rows.to(device, non_blocking=True)


def discrete_denoiser(model: ModelFn, sigma_table: torch.Tensor, prediction_type: str, device="cpu", *,
                      sigmas: Sequence[float] | torch.Tensor | None = None) -> Denoiser:
    """``denoise(x, sigma)`` from a model trained on discrete timesteps: ``model(x * c_in, t(sigma))``
    (its raw output: eps, v or the clean sample) converted by ``denoised_from_output``.

    ``sigmas``: the sampling sigmas, when known ahead: their timesteps are then computed once, on
    the device before the loop (a prepared denoiser: no host-to-device copy per step); any other
    sigma is converted when asked for. The numbers are the same either way."""
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample")
    known: dict[float, torch.Tensor] = {}
    if sigmas is not None:
        values = [float(s) for s in sigmas if float(s) > 0]
        known = dict(zip(values, schedule_timesteps(sigma_table, values, device)))

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = known.get(sigma)
        if t is None:
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
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
    region: Callable[[str], ContextManager] = no_region,
) -> torch.Tensor:
    """Ancestral Euler over ``sigmas``. ``x`` is already scaled by ``sigmas[0]``;
    ``denoise(x, sigma)`` returns the denoised estimate; ``noise`` is a ``NoiseSource`` or
    ``PredrawnNoise``. ``callback(i, x)`` runs after step ``i``; a tensor it returns replaces ``x``.
    ``region("sampler_update")`` encloses each update (a timing hook)."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, s)
        with region("sampler_update"):
            sigma_down, sigma_up = get_ancestral_step(s, s_next, eta)
            x = x + to_d(x, s, denoised) * (sigma_down - s)
            if s_next > 0:
                x = x + noise.like(x) * sigma_up
        if callback is not None:
            replaced = callback(i, x)
            x = x if replaced is None else replaced
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
