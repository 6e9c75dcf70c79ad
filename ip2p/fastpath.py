"""The editor's fast path: a UNet prepared for inference and a sampling loop with nothing on its
hot path that synchronises the GPU.

What it does, piece by piece (the lead wires these into ``ip2p.editor``; ``FastEditPath`` shows
the whole chain for one chunk of same-size edits, built from the editor's public pieces):

- ``prepare_unet``: SDPA attention (diffusers ``AttnProcessor2_0``), channels-last weights and
  inputs, ``torch.compile`` (``none`` / ``default`` / ``max-autotune``) and CUDA graphs for static
  shapes: with compile, inductor's own graphs (mode ``reduce-overhead``, or ``max-autotune`` with
  graphs); without compile, ``CudaGraphUNet`` captures the eager UNet once per input shape.
- the sampler's inputs made ahead: the noise pre-drawn on each request's CPU generator in exactly
  the order ``ip2p.sampling.NoiseSource`` draws and moved in one non-blocking copy
  (``ip2p.sampling.PredrawnNoise``), and the per-step timesteps computed once on the device (the
  prepared ``ip2p.sampling.discrete_denoiser``); ``plan_euler_ancestral`` bundles them for a chunk.
- the loop itself is ``ip2p.sampling.sample_euler_ancestral``, the one every path runs
  (``PlannedEulerAncestral`` runs a plan through it); compilation and CUDA graphs wrap the UNet
  call inside the denoiser (``ip2p.guidance.GuidedUNet`` over a ``PreparedUNet``), never the loop.

On the hot path (one step) there is no ``.item()``, no ``bool(tensor)``, no host-to-device copy
from pageable memory and no tensor created from Python values: the GPU test runs the loop under
``torch.cuda.set_sync_debug_mode("error")``.

Tolerance: on the CPU, without channels-last, the fast path's images equal the eager editor's
exactly (same operations in the same order); channels-last changes convolution summation order,
so images then agree to about 1e-5 (float32); tests allow 1e-4.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from ip2p.guidance import GuidedUNet
from ip2p.sampling import (
    PredrawnNoise,
    discrete_denoiser,
    discrete_sigmas,
    get_ancestral_step,
    get_sigmas,
    predraw_noise,
    sample_euler_ancestral,
    schedule_timesteps,
)

__all__ = [
    "COMPILE_MODES",
    "FastPathSettings",
    "torch_compile_mode",
    "use_sdpa_attention",
    "CudaGraphUNet",
    "PreparedUNet",
    "prepare_unet",
    "predraw_noise",
    "EulerAncestralPlan",
    "plan_euler_ancestral",
    "PlannedEulerAncestral",
    "GuidedUNet",
    "FastEditPath",
]

COMPILE_MODES = ("none", "default", "max-autotune")


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class FastPathSettings:
    """How the UNet is prepared. ``compile``: ``none``, ``default`` or ``max-autotune``;
    ``cuda_graphs``: replay captured graphs for static shapes (CUDA only); ``channels_last``:
    NHWC weights and inputs; ``sdpa``: diffusers ``AttnProcessor2_0`` on every attention layer."""

    compile: str = "none"
    cuda_graphs: bool = False
    channels_last: bool = False
    sdpa: bool = True

    def validate(self, device: torch.device) -> "FastPathSettings":
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile: must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.cuda_graphs and torch.device(device).type != "cuda":
            raise ValueError(f"cuda_graphs: needs a CUDA device, got {torch.device(device)}; drop cuda_graphs or run on a GPU")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def torch_compile_mode(compile: str, cuda_graphs: bool) -> str | None:
    """The ``torch.compile`` mode for our settings: None for no compilation. Inductor's
    ``max-autotune`` already replays CUDA graphs, so without ``cuda_graphs`` it becomes
    ``max-autotune-no-cudagraphs``; ``default`` with graphs is ``reduce-overhead``."""
    if compile == "none":
        return None
    if compile == "default":
        return "reduce-overhead" if cuda_graphs else "default"
    if compile == "max-autotune":
        return "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
    raise ValueError(f"compile: must be one of {COMPILE_MODES}, got {compile!r}")


def use_sdpa_attention(model: torch.nn.Module) -> int:
    """Set diffusers' ``AttnProcessor2_0`` (``F.scaled_dot_product_attention``) on every attention
    layer of ``model``; returns how many layers were set (0 when the model has none)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    n = 0
    for mod in model.modules():
        if hasattr(mod, "set_processor") and hasattr(mod, "processor"):
            if not isinstance(mod.processor, AttnProcessor2_0):
                mod.set_processor(AttnProcessor2_0())
            n += 1
    return n


# ---------------------------------------------------------------- CUDA graphs (eager UNet)

class CudaGraphUNet:
    """Replays a captured CUDA graph of ``unet(sample, t, encoder_hidden_states=...)`` per input
    signature (shapes, dtypes, memory format). Inputs are copied into static buffers on the
    device; the returned tensor is the graph's static output, overwritten by the next call (use
    it before calling again: the guidance arithmetic does)."""

    def __init__(self, unet: torch.nn.Module, *, warmup: int = 2):
        if not torch.cuda.is_available():
            raise RuntimeError("CudaGraphUNet: CUDA graphs need a CUDA device")
        self.unet = unet
        self.warmup = int(warmup)
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple, tuple] = {}

    @staticmethod
    def _key(*tensors: torch.Tensor) -> tuple:
        return tuple((tuple(t.shape), t.dtype, t.device, t.is_contiguous(memory_format=torch.channels_last))
                     for t in tensors)

    def _forward(self, sample, t, text):
        return self.unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]

    def _capture(self, sample, t, text):
        static = (sample.clone(memory_format=torch.preserve_format), t.clone().contiguous(),
                  text.clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self._forward(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self.pool):
            out = self._forward(*static)
        return graph, static, out

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        key = self._key(sample, t, encoder_hidden_states)
        if key not in self._graphs:
            self._graphs[key] = self._capture(sample, t, encoder_hidden_states)
        graph, (s_buf, t_buf, e_buf), out = self._graphs[key]
        s_buf.copy_(sample, non_blocking=True)
        t_buf.copy_(t, non_blocking=True)
        e_buf.copy_(encoder_hidden_states, non_blocking=True)
        graph.replay()
        return out

    @property
    def captured_shapes(self) -> list[tuple]:
        return list(self._graphs)


# ---------------------------------------------------------------- the prepared UNet

class PreparedUNet:
    """``prepared(sample, t, encoder_hidden_states) -> output``: the UNet after ``prepare_unet``.
    ``eager`` is the module itself (weights shared), ``settings`` how it was prepared,
    ``compile_mode`` the mode given to ``torch.compile`` (None when not compiled)."""

    def __init__(self, eager: torch.nn.Module, settings: FastPathSettings, call: Callable, compile_mode: str | None,
                 sdpa_layers: int):
        self.eager = eager
        self.settings = settings
        self._call = call
        self.compile_mode = compile_mode
        self.sdpa_layers = sdpa_layers
        self._mark_step = compile_mode in ("reduce-overhead", "max-autotune")

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if self.settings.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        if self._mark_step:  # inductor's CUDA graphs: each call is a new step (outputs are consumed at once)
            torch.compiler.cudagraph_mark_step_begin()
        return self._call(sample, t, encoder_hidden_states)

    def describe(self) -> dict:
        return {**self.settings.as_dict(), "torch_compile_mode": self.compile_mode, "sdpa_layers": self.sdpa_layers,
                "cuda_graphs_by": ("inductor" if self._mark_step else "CudaGraphUNet" if self.settings.cuda_graphs else None)}


def prepare_unet(unet: torch.nn.Module, settings: FastPathSettings | None = None, *,
                 device: torch.device | str | None = None) -> PreparedUNet:
    """Prepare ``unet`` (already on its device and dtype, in eval mode) for inference. The module
    is changed in place (attention processors, memory format): every holder of it sees the change,
    with the same weights."""
    settings = settings or FastPathSettings()
    unet = getattr(unet, "_orig_mod", unet)
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    settings.validate(device)
    unet.eval().requires_grad_(False)
    sdpa_layers = use_sdpa_attention(unet) if settings.sdpa else 0
    if settings.channels_last:
        unet.to(memory_format=torch.channels_last)
    mode = torch_compile_mode(settings.compile, settings.cuda_graphs)

    if mode is not None:
        compiled = torch.compile(unet, mode=mode, dynamic=False)

        def call(sample, t, text):
            return compiled(sample, t, encoder_hidden_states=text, return_dict=False)[0]
    elif settings.cuda_graphs:
        call = CudaGraphUNet(unet)
    else:
        def call(sample, t, text):
            return unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]
    return PreparedUNet(unet, settings, call, mode, sdpa_layers)


# ---------------------------------------------------------------- the schedule, made ahead

@dataclass
class EulerAncestralPlan:
    """What the paper's sampler needs for one chunk, made before the loop: the ``n + 1`` sampling
    sigmas (last 0) as floats, the model's sigma table (for the prepared denoiser's timesteps) and
    every noise draw ``[1 + n_noisy, B, *shape]`` on the device (``ip2p.sampling.PredrawnNoise``)."""

    sigmas: list[float]
    sigma_table: torch.Tensor
    draws: torch.Tensor
    device: torch.device

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def timesteps(self) -> torch.Tensor:
        """``[n, 1]`` on the device, row i = ``sigma_to_t(sigmas[i])``."""
        return schedule_timesteps(self.sigma_table, self.sigmas[:-1], self.device)

    @property
    def sigma_up(self) -> list[float]:
        return [get_ancestral_step(s, n)[1] for s, n in zip(self.sigmas, self.sigmas[1:])]

    @property
    def noise_index(self) -> list[int]:
        """The row of ``step_noise`` step i adds, or -1 (a step to sigma 0 adds none)."""
        return [int(sum(n > 0 for n in self.sigmas[1:i + 1])) if s_next > 0 else -1
                for i, s_next in enumerate(self.sigmas[1:])]

    @property
    def init_noise(self) -> torch.Tensor:
        return self.draws[0]

    @property
    def step_noise(self) -> torch.Tensor:
        return self.draws[1:]

    def noise(self) -> PredrawnNoise:
        """A fresh noise source over the draws (a plan can be sampled more than once)."""
        return PredrawnNoise(self.draws)


def plan_euler_ancestral(sigma_table: torch.Tensor, n_steps: int, seeds: Sequence[int], latent_shape: Sequence[int],
                         *, device: torch.device | str = "cpu", noise_dtype: torch.dtype = torch.float32) -> EulerAncestralPlan:
    """The plan for ``n_steps`` over the model's discrete sigmas (``sigma_table``, as
    ``ip2p.sampling.discrete_sigmas`` gives), for one request per seed."""
    sigmas = get_sigmas(sigma_table, n_steps)
    noise = PredrawnNoise.for_euler_ancestral(seeds, latent_shape, sigmas, dtype=noise_dtype, device=device)
    return EulerAncestralPlan([float(s) for s in sigmas], sigma_table, noise.draws, torch.device(device))


class PlannedEulerAncestral:
    """A plan run by the one loop, ``ip2p.sampling.sample_euler_ancestral``, with the prepared
    discrete denoiser over ``model(x_in, t)`` (the guided output: eps, v or sample, as
    ``prediction_type`` says; give the model's own: ``editor.prediction_type``)."""

    def __init__(self, plan: EulerAncestralPlan, prediction_type: str = "epsilon"):
        self.plan = plan
        self.prediction_type = prediction_type

    def run(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None) -> torch.Tensor:
        p = self.plan
        sigmas = torch.tensor(p.sigmas)
        denoise = discrete_denoiser(model, p.sigma_table, self.prediction_type, p.device, sigmas=sigmas)
        noise = p.noise()
        return sample_euler_ancestral(denoise, noise.randn(p.draws.shape[2:]) * sigmas[0], sigmas, noise,
                                      callback=callback)


# ---------------------------------------------------------------- one chunk, end to end

class FastEditPath:
    """Edits one chunk of same-size requests with the fast path, from the editor's public pieces
    (``encode_text``, ``encode_images``, ``decode``). The editor's own batching (deduplication,
    grouping by size, empty instructions) stays in the editor; this is the chunk it samples."""

    def __init__(self, editor, settings: FastPathSettings | None = None):
        self.editor = editor
        self.settings = settings or FastPathSettings()
        self.unet = prepare_unet(editor.components.unet, self.settings, device=editor.device)
        self.sigma_table = discrete_sigmas(torch.as_tensor(editor.components.scheduler.alphas_cumprod))

    def plan(self, n_steps: int, seeds: Sequence[int], latent_shape: Sequence[int]) -> EulerAncestralPlan:
        return plan_euler_ancestral(self.sigma_table, n_steps, seeds, latent_shape, device=self.editor.device)

    @torch.no_grad()
    def edit_latents(self, image_latent, text_emb, null_emb, guidance_scale, image_guidance_scale, n_steps: int,
                     seeds: Sequence[int]) -> torch.Tensor:
        """Final latents ``[B, ...]`` (float32), a drop-in for the editor's sampling of one chunk
        with the paper's sampler."""
        guided = GuidedUNet(self.unet, image_latent, text_emb, null_emb, guidance_scale, image_guidance_scale,
                            dtype=self.editor.dtype)
        plan = self.plan(n_steps, seeds, image_latent.shape[1:])
        return PlannedEulerAncestral(plan, self.editor.prediction_type).run(guided)

    @torch.no_grad()
    def edit(self, images: torch.Tensor, instructions: Sequence[str], *, image_guidance_scale=1.5,
             guidance_scale=7.5, num_inference_steps: int = 100, seeds: Sequence[int] = (0,)) -> torch.Tensor:
        """``images`` ``[B, 3, H, W]`` in [0, 1] (H, W multiples of the VAE factor), one instruction
        and one seed per image; returns the edited images ``[B, 3, H, W]`` on the editor's device."""
        n = len(images)
        if len(instructions) != n or len(seeds) != n:
            raise ValueError(f"FastEditPath.edit: {n} images, {len(instructions)} instructions, {len(seeds)} seeds "
                             f"(give one instruction and one seed per image)")
        empty = [i for i, s in enumerate(instructions) if s == ""]
        if empty:
            raise ValueError(f"FastEditPath.edit: request {empty[0]} has an empty instruction; the editor returns "
                             f"the input for those, so leave them out of the chunk")
        ed = self.editor
        text = ed.encode_text(list(instructions))
        null = ed.encode_text([""])
        lat = ed.encode_images(list(images))
        latents = self.edit_latents(lat, text, null, guidance_scale, image_guidance_scale, int(num_inference_steps),
                                    list(seeds))
        return ed.decode(latents)
