"""The editor's fast path: a UNet prepared for inference and a sampling loop with nothing on its
hot path that synchronises the GPU.

What it does, piece by piece (the lead wires these into ``ip2p.editor``; ``FastEditPath`` shows
the whole chain for one chunk of same-size edits, built from the editor's public pieces):

- ``prepare_unet``: SDPA attention (diffusers ``AttnProcessor2_0``), channels-last weights and
  inputs, ``torch.compile`` (``none`` / ``default`` / ``max-autotune``) and CUDA graphs for static
  shapes: with compile, inductor's own graphs (mode ``reduce-overhead``, or ``max-autotune`` with
  graphs); without compile, ``CudaGraphUNet`` captures the eager UNet once per input shape.
- ``plan_euler_ancestral``: everything the paper's Euler ancestral sampler needs per step, made
  ahead of time: sigmas, ``sigma_down``/``sigma_up`` and the input scale ``c_in`` as Python floats,
  the per-step timesteps as one tensor on the device (each row exactly what the editor computes
  with ``sigma_to_t``), and the initial and per-step noise drawn on each request's CPU generator
  in exactly the order ``ip2p.sampling.NoiseSource`` draws (so the numbers are the same), then
  moved to the device in one non-blocking copy from pinned memory.
- ``GuidedUNet``: the 3B guidance batch (``ip2p.guidance.cfg_batch`` order, built once per chunk)
  and the dual-guidance arithmetic with the scales validated once, ahead (``ip2p.guidance.as_scale``
  checks finiteness with a host read, which would sync the GPU at every step).
- ``PlannedEulerAncestral``: the sampler loop, step by step (``model_input``, ``timestep``,
  ``update``), so the profiler can time each part, or whole (``run``).

On the hot path (one step) there is no ``.item()``, no ``bool(tensor)``, no host-to-device copy
from pageable memory and no tensor created from Python values: the GPU test runs the loop under
``torch.cuda.set_sync_debug_mode("error")``.

Tolerance: on the CPU, without channels-last, the fast path's images equal the eager editor's
exactly (same operations in the same order); channels-last changes convolution summation order,
so images then agree to about 1e-5 (float32); tests allow 1e-4.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from ip2p.guidance import as_scale, cfg_batch
from ip2p.sampling import denoised_from_output, discrete_sigmas, get_ancestral_step, get_sigmas, sigma_to_t, to_d

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


@dataclass
class EulerAncestralPlan:
    """Everything the paper's Euler ancestral sampler needs, per step, made before the loop.

    ``sigmas``: the n+1 sampling sigmas (last 0) as floats; ``sigma_down``/``sigma_up``/``c_in``:
    per step, floats; ``timesteps``: ``[n, 1]`` on the device, row i = ``sigma_to_t(sigmas[i])``;
    ``init_noise``: ``[B, *shape]`` on the device; ``step_noise``: ``[n_noisy, B, *shape]`` on the
    device; ``noise_index[i]``: the row of ``step_noise`` step i adds, or -1 (the last step)."""

    sigmas: list[float]
    sigma_down: list[float]
    sigma_up: list[float]
    c_in: list[float]
    timesteps: torch.Tensor
    init_noise: torch.Tensor
    step_noise: torch.Tensor
    noise_index: list[int]

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def plan_euler_ancestral(sigma_table: torch.Tensor, n_steps: int, seeds: Sequence[int], latent_shape: Sequence[int],
                         *, device: torch.device | str = "cpu", eta: float = 1.0,
                         noise_dtype: torch.dtype = torch.float32) -> EulerAncestralPlan:
    """The plan for ``n_steps`` over the model's discrete sigmas (``sigma_table``, as
    ``ip2p.sampling.discrete_sigmas`` gives), for one request per seed."""
    device = torch.device(device)
    sigmas_t = get_sigmas(sigma_table, n_steps)
    sigmas = [float(s) for s in sigmas_t]
    down, up, c_in, noise_index = [], [], [], []
    n_noisy = 0
    for i in range(n_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        d, u = get_ancestral_step(s, s_next, eta)
        down.append(d)
        up.append(u)
        c_in.append(1.0 / math.sqrt(s**2 + 1.0))
        noise_index.append(n_noisy if s_next > 0 else -1)
        n_noisy += s_next > 0
    # each row exactly as the editor computes it for one step: sigma_to_t(tensor([sigma]))
    t_rows = torch.stack([sigma_to_t(torch.tensor([s]), sigma_table) for s in sigmas[:-1]])
    pin = device.type == "cuda"
    draws = predraw_noise(seeds, latent_shape, 1 + n_noisy, dtype=noise_dtype, pin=pin)
    if pin:
        t_rows = t_rows.pin_memory()
    draws = draws.to(device, non_blocking=True)
    return EulerAncestralPlan(sigmas, down, up, c_in, t_rows.to(device, non_blocking=True), draws[0], draws[1:],
                              noise_index)


class PlannedEulerAncestral:
    """The Euler ancestral loop over a plan; the same arithmetic, in the same order, as
    ``ip2p.sampling.sample_euler_ancestral`` with the editor's discrete denoiser
    (``denoised_from_output(x, sigma, model(x * c_in, t), prediction_type)``). ``eps_fn(x_in, t)``
    returns the guided model output (eps, v or sample, as ``prediction_type`` says)."""

    def __init__(self, plan: EulerAncestralPlan, prediction_type: str = "epsilon"):
        self.plan = plan
        self.prediction_type = prediction_type

    def start(self) -> torch.Tensor:
        return self.plan.init_noise * self.plan.sigmas[0]

    def model_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x * self.plan.c_in[i]

    def timestep(self, i: int) -> torch.Tensor:
        return self.plan.timesteps[i]

    def update(self, i: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        p = self.plan
        s = p.sigmas[i]
        denoised = denoised_from_output(x, s, eps, self.prediction_type)
        x = x + to_d(x, s, denoised) * (p.sigma_down[i] - s)
        k = p.noise_index[i]
        if k >= 0:
            x = x + p.step_noise[k] * p.sigma_up[i]
        return x

    def run(self, eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        x = self.start()
        for i in range(self.plan.steps):
            x = self.update(i, x, eps_fn(self.model_input(i, x), self.timestep(i)))
            if callback is not None:
                callback(i, x)
        return x


# ---------------------------------------------------------------- the guided UNet call

class GuidedUNet:
    """One UNet call on the 3B batch ``[text+img, img only, uncond]`` and dual guidance
    ``uncond + sT*(cond - img_cond) + sI*(img_cond - uncond)``, with the conditioning batch and
    the scales built once per chunk. Numerically the same as ``InstructPix2PixEditor.guided_eps``."""

    def __init__(self, unet: Callable, image_latent: torch.Tensor, text_emb: torch.Tensor, null_emb: torch.Tensor,
                 guidance_scale, image_guidance_scale, *, dtype: torch.dtype):
        self.unet = unet
        self.dtype = dtype
        self.batch = b = image_latent.shape[0]
        image_latent = image_latent.to(dtype)
        _, self.text3, self.image3 = cfg_batch(image_latent, text_emb.to(dtype), null_emb.to(dtype), image_latent)
        like = torch.empty((b, 1, 1, 1), dtype=torch.float32, device=image_latent.device)
        # validated here, once (a finiteness check reads the host); the loop uses them as they are
        self.s_t = as_scale(guidance_scale, b, like=like, name="guidance_scale")
        self.s_i = as_scale(image_guidance_scale, b, like=like, name="image_guidance_scale")

    def unet_output(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The raw 3B UNet output for sampler-scaled latents ``x_in`` ``[B, ...]`` at timestep ``t`` ``[1]``."""
        z = x_in.to(self.dtype)
        sample = torch.cat([torch.cat([z, z, z]), self.image3], dim=1)
        return self.unet(sample, t.reshape(-1).expand(3 * self.batch), self.text3)

    def guide(self, out: torch.Tensor) -> torch.Tensor:
        out_cond, out_img_cond, out_uncond = out.float().chunk(3)
        return out_uncond + self.s_t * (out_cond - out_img_cond) + self.s_i * (out_img_cond - out_uncond)

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.guide(self.unet_output(x_in, t))


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
