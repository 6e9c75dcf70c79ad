"""SDEdit: Stable Diffusion img2img with the output caption (the paper's first baseline).

The input image is encoded, noised to the timestep that ``strength`` selects and denoised by a
text-to-image model prompted with the request's ``output_caption``, under classifier-free
guidance ``eps_uncond + s * (eps_text - eps_uncond)``. The paper sweeps ``strength``.

- Exact to diffusers' ``StableDiffusionImg2ImgPipeline``: the same start step
  (``int(num_inference_steps * strength)`` denoising steps, the last ones of the scheduler's
  schedule), the image latent ``scaling_factor * posterior sample`` (``retrieve_latents``'s
  default ``sample_mode="sample"``), the initial noise added with ``scheduler.add_noise``.
- Reproducible per request: request ``i`` with seed ``s`` draws, from its own
  ``torch.Generator().manual_seed(s)`` and in this order, the posterior sample, the initial noise,
  then every per-step scheduler noise, which is what diffusers draws for that image alone.
- Batched (``ip2p.core``): one UNet call serves requests with different strengths, guidance scales
  and seeds. Requests with the same number of steps walk the same timestep schedule, a smaller
  strength joining later (each start step keeps its own scheduler state).
- Deliberate differences from diffusers: the guidance formula is applied for every ``s`` (diffusers
  uses the text-conditioned prediction alone for any ``s <= 1``; the two agree at ``s = 1``, where
  this editor too runs the conditional half only); a strength that gives zero denoising steps
  (``int(steps * strength) == 0``, e.g. 0) returns the processed input unchanged, where diffusers
  fails; sampling runs in float32 with the models in ``dtype`` (as ``ip2p.editor``).

Models (``ip2p.models``, kind "t2i"): a diffusers text-to-image folder or hub id (``world:sd``, the
small world's SD; for real images ``stable-diffusion-v1-5/stable-diffusion-v1-5``), a single file,
or a built-in architecture with random weights (``tiny-t2i``, ``sd15-t2i``) for tests.
"""
from __future__ import annotations

import inspect
import json
import os
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch

from ip2p.core import RESIZE_KNOB, Chunk, DiffusionEditor, broadcast
from ip2p.errors import DataRowError
from ip2p.guidance import cfg
from ip2p.models import build_t2i_builtin, load_components  # noqa: F401  (build_t2i_builtin: public name here)
from ip2p.protocol import EditRequest, Knob, who
from ip2p.registry import register_method
from ip2p.sampling import fresh_scheduler
from ip2p.util.hashing import hash_bytes


def denoising_start(num_inference_steps: int, strength: float) -> int:
    """Index of the first of the schedule's steps that SDEdit runs: diffusers' ``t_start``.
    ``int(steps * strength)`` steps run; ``steps`` means none (the input is returned)."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_timestep, 0)


class SDEditEditor(DiffusionEditor):
    """SDEdit behind the harness protocol (``ip2p.protocol.Editor``)."""

    name = "sdedit"
    kind = "t2i"
    # diffusers' img2img defaults
    declared_knobs: Mapping[str, Knob] = {
        "strength": Knob("float", default=0.75, minimum=0.0, maximum=1.0,
                         doc="how far toward noise the input is pushed before denoising (0: input returned)"),
        "guidance_scale": Knob("float", default=7.5, minimum=0.0, doc="classifier-free guidance scale on the output caption"),
        "num_inference_steps": Knob("int", default=50, minimum=1,
                                    doc="scheduler steps for strength 1; int(steps * strength) of them run"),
        "resize": RESIZE_KNOB,
    }

    def __init__(self, components, **kwargs):
        super().__init__(components, **kwargs)
        if self.scheduler is None:
            self.scheduler = self.components.scheduler  # the model's own

    @property
    def noise_dtype(self) -> torch.dtype:
        return self.dtype  # diffusers draws img2img noise in the latents' dtype

    def identity_extra(self) -> dict[str, Any]:
        cfg = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        return {"scheduler_config_hash": hash_bytes(json.dumps(cfg, sort_keys=True, default=str).encode()),
                "prompt": "output_caption"}

    # ------------------------------------------------------------ the method's own parts

    def prompt(self, request: EditRequest, knobs, index: int) -> str:
        if not isinstance(request.output_caption, str) or not request.output_caption.strip():
            raise DataRowError(f"{who(request.item_id, index)}: output_caption is empty; SDEdit prompts the model "
                               f"with the output caption (give each request its output_caption, or use a test set "
                               f"that has them)")
        return request.output_caption

    def passthrough(self, request: EditRequest, knobs) -> bool:
        steps = int(knobs["num_inference_steps"])
        return denoising_start(steps, float(knobs["strength"])) >= steps  # zero denoising steps

    def order(self, knobs) -> int:  # earliest start first, so chunks fill evenly
        return denoising_start(int(knobs["num_inference_steps"]), float(knobs["strength"]))

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior ``(mean, std)`` of ``2x - 1`` (unscaled latent space), one image per VAE call."""
        dist = self.components.vae.encode(2 * x[None].to(self.device, self.dtype) - 1).latent_dist
        return dist.mean[0], dist.std[0]

    def guided_eps(self, x_in: torch.Tensor, t, text_emb, null_emb, guidance_scale: Sequence[float]) -> torch.Tensor:
        """``eps_uncond + s * (eps_text - eps_uncond)`` per sample in one UNet call on
        ``[uncond rows; text rows]`` (diffusers' order); a sample with ``s == 1`` gets no uncond row."""
        b = x_in.shape[0]
        need_uncond = [j for j in range(b) if guidance_scale[j] != 1.0]
        x = x_in.to(self.dtype)
        z = torch.cat([x[need_uncond], x]) if need_uncond else x
        ctx = torch.cat([null_emb.expand(len(need_uncond), -1, -1), text_emb]) if need_uncond else text_emb
        out = self.unet(z, t, encoder_hidden_states=ctx, return_dict=False)[0].float()
        eps_text = out[len(need_uncond):]
        if not need_uncond:
            return eps_text
        eps_uncond = eps_text.clone()
        eps_uncond[need_uncond] = out[: len(need_uncond)]
        return cfg(eps_uncond, eps_text, guidance_scale)

    def sample(self, chunk: Chunk) -> torch.Tensor:
        """Samples may start at different steps of the same schedule; each start step has its own
        scheduler (state is per run); UNet calls are shared."""
        vae, noise, n_steps = self.components.vae, chunk.noise, chunk.steps
        post_mean, post_std = chunk.image_cond
        scale = [float(k["guidance_scale"]) for k in chunk.knobs]
        # draw order per request, as diffusers for one image: posterior sample, initial noise, step noise
        z0 = (post_mean + post_std * noise.randn(post_mean.shape[1:])) * vae.config.scaling_factor
        init_noise = noise.randn(z0.shape[1:])
        z0, init_noise = z0.float(), init_noise.float()

        by_start: dict[int, list[int]] = OrderedDict()
        for j, k in enumerate(chunk.knobs):
            by_start.setdefault(self.order(k), []).append(j)
        runs = []  # [rows, scheduler, latents, first step, step kwargs]
        for s, rows in by_start.items():
            sched = fresh_scheduler(self.scheduler)
            sched.set_timesteps(n_steps, device=self.device)
            first = s * sched.order
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(first)
            t0 = sched.timesteps[first : first + 1].repeat(len(rows))
            x = sched.add_noise(z0[rows], init_noise[rows], t0)
            runs.append([rows, sched, x, first, _step_kwargs(sched, [noise.generators[j] for j in rows])])

        timesteps = runs[0][1].timesteps
        for k in range(min(r[3] for r in runs), len(timesteps)):
            t = timesteps[k]
            live = [r for r in runs if r[3] <= k]
            x_in = torch.cat([r[1].scale_model_input(r[2], t) for r in live])
            rows = [j for r in live for j in r[0]]
            eps = self.guided_eps(x_in, t, chunk.text[rows], chunk.null, [scale[j] for j in rows])
            off = 0
            for r in live:
                m = len(r[0])
                r[2] = r[1].step(eps[off : off + m], t, r[2], return_dict=False, **r[4])[0]
                off += m
        out = torch.empty_like(z0)
        for rows, _, x, _, _ in runs:
            out[rows] = x.float()
        return out

    # ------------------------------------------------------------ public API

    def edit(self, images, output_captions: str | Sequence[str], *, strength=None, guidance_scale=None,
             num_inference_steps=None, seeds=0, resize: str | None = "paper") -> torch.Tensor:
        """SDEdit ``images`` toward ``output_captions``; float ``[N, 3, H, W]`` in [0, 1]. Every
        argument takes one value or one per image (a single image or caption is broadcast); a knob
        left None takes its declared default (``declared_knobs``)."""
        given = {"strength": strength, "guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps}
        strength, guidance_scale, num_inference_steps = (self.knobs[k] if v is None else v for k, v in given.items())
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        caps = [output_captions] if isinstance(output_captions, str) else list(output_captions)
        n = max(len(images), len(caps))
        cols = {name: broadcast(v, n, name) for name, v in
                [("images", images), ("output_captions", caps), ("strength", strength),
                 ("guidance_scale", guidance_scale), ("num_inference_steps", num_inference_steps), ("seeds", seeds)]}
        return self.run_same_size([
            EditRequest(image=cols["images"][i], instruction="", output_caption=cols["output_captions"][i],
                        knobs={"strength": cols["strength"][i], "guidance_scale": cols["guidance_scale"][i],
                               "num_inference_steps": int(cols["num_inference_steps"][i]), "resize": resize},
                        seed=int(cols["seeds"][i]))
            for i in range(n)])


def _step_kwargs(scheduler, generators) -> dict[str, Any]:
    """What diffusers' ``prepare_extra_step_kwargs`` passes: ``eta=0`` and the generators,
    each only where ``step`` accepts it."""
    params = inspect.signature(scheduler.step).parameters
    return {**({"eta": 0.0} if "eta" in params else {}), **({"generator": generators} if "generator" in params else {})}


def load_sdedit(source: str | os.PathLike = "world:sd", *, device=None, dtype=torch.float32, max_batch: int = 16,
                resize: str | None = "paper", scheduler=None, local_files_only: bool | None = None, seed: int = 0,
                compile: bool = False) -> SDEditEditor:
    """An SDEdit editor on a text-to-image model: ``world:sd`` (default), a diffusers folder or hub
    id (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``), or ``tiny-t2i`` / ``sd15-t2i``
    (random weights, deterministic from ``seed``)."""
    components = load_components(source, kind="t2i", local_files_only=local_files_only, seed=seed)
    return SDEditEditor(components, device=device, dtype=dtype, max_batch=max_batch, resize=resize,
                        scheduler=scheduler, compile=compile)


register_method(
    "sdedit",
    lambda model=None, device=None, **options: load_sdedit(model or "world:sd", device=device, **options),
    editor_class=SDEditEditor,
    default_model="world:sd",
    description="SDEdit: SD img2img prompted with the output caption (Meng et al.); "
                "model: a text-to-image diffusers folder or hub id, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5",
    demo_model="world:sd",
    demo_grid={"strength": [0.3, 0.5, 0.7]},
    demo_knobs={"num_inference_steps": 20, "guidance_scale": 7.5},
    demo_limit=48,
    curve_knob="strength",
    replace=True,
)

__all__ = ["SDEditEditor", "load_sdedit", "build_t2i_builtin", "denoising_start"]
