"""The InstructPix2Pix editor: its conditioning and its guided denoiser, on the shared batching core.

- Exact to the paper: dual classifier-free guidance (``ip2p.guidance``) for every sI, sT; image
  latents are the VAE posterior mode, unscaled, concatenated after the sampler's input scaling;
  the default sampler is the paper's Euler ancestral over the model's discrete sigmas, honouring
  the model's ``prediction_type`` (epsilon, v_prediction, sample) as k-diffusion's discrete
  denoisers do; any diffusers scheduler through ``scheduler=``.
- Batched by ``ip2p.core``: requests with different knob values share UNet calls (a chunk of B
  requests is one UNet call on 3B samples); each distinct input image is VAE-encoded once and each
  distinct instruction embedded once; seeds map to noise exactly as diffusers for one image.
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Mapping, Sequence

import torch

from ip2p.core import (
    RESIZE_KNOB,
    RESIZE_MODES,
    Chunk,
    DiffusionEditor,
    broadcast,
    paper_size,
    resize_paper,
)
from ip2p.guidance import GuidedUNet
from ip2p.models import load_components
from ip2p.protocol import EditRequest, Knob, KnobError
from ip2p.sampling import (
    PredrawnNoise,
    discrete_denoiser,
    discrete_sigmas,
    get_sigmas,
    sample_euler_ancestral,
    sample_with_scheduler,
    scheduler_from,
)


def _scheduler_name_ok(value: Any) -> str | None:
    """None for ``paper`` or the class name of a diffusers scheduler, else why not (checked before any
    model loads: spec validation, ``ip2p edit --scheduler``)."""
    if value == "paper":
        return None
    import diffusers

    cls = getattr(diffusers, str(value), None)
    base = getattr(diffusers, "SchedulerMixin", None)
    if isinstance(cls, type) and (base is None or issubclass(cls, base)) and hasattr(cls, "from_config"):
        return None
    known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))
    return (f"must be paper (the paper's Euler ancestral) or a diffusers scheduler class, e.g. "
            f"{', '.join(known[:8])}, ... ({len(known)} in all); got {value!r}")


class InstructPix2PixEditor(DiffusionEditor):
    """InstructPix2Pix behind the harness protocol (``ip2p.protocol.Editor``)."""

    name = "instructpix2pix"
    kind = "ip2p"
    # the paper's defaults: sI 1.5, sT 7.5, 100 steps
    declared_knobs: Mapping[str, Knob] = {
        "image_guidance_scale": Knob("float", default=1.5, doc="sI: image guidance scale"),
        "guidance_scale": Knob("float", default=7.5, doc="sT: text guidance scale"),
        "num_inference_steps": Knob("int", default=100, minimum=1, doc="sampler steps"),
        "resize": RESIZE_KNOB,
        "scheduler": Knob("str", default=None, nullable=True, validate=_scheduler_name_ok,
                          doc="null: the paper's Euler ancestral over the model's sigmas; or a diffusers scheduler class"),
    }

    def __init__(self, components, *, fast=None, **kwargs):
        """``fast``: None for the eager path, or ``ip2p.fastpath.FastPathSettings`` (or a mapping of
        its fields: compile, cuda_graphs, channels_last, sdpa) for the fast path of the paper's
        sampler: a prepared UNet, the schedule and noise made ahead, nothing that synchronises the
        GPU inside the loop. Its images equal the eager path's within 1e-4 (float32, CPU; exactly
        without channels-last)."""
        super().__init__(components, **kwargs)
        self._sigma_table = discrete_sigmas(torch.as_tensor(self.components.scheduler.alphas_cumprod))
        self.fast = None
        if fast is not None:
            from ip2p.fastpath import FastPathSettings, prepare_unet

            self.fast = fast if isinstance(fast, FastPathSettings) else FastPathSettings(**dict(fast))
            self._prepared = prepare_unet(self.components.unet, self.fast, device=self.device)

    # ------------------------------------------------------------ the method's own parts

    def prompt(self, request: EditRequest, knobs, index: int) -> str:
        return request.instruction

    def passthrough(self, request: EditRequest, knobs) -> bool:
        return request.instruction == ""  # the official script returns the resized input

    def group(self, knobs) -> Any:
        return knobs["scheduler"]

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        """Image-conditioning latent: VAE posterior mode of ``2x - 1``, not scaled."""
        vae = self.components.vae
        return (vae.encode(2 * x[None].to(self.device, self.dtype) - 1).latent_dist.mode()[0],)

    @torch.no_grad()
    def encode_images(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Image-conditioning latents of several images, one VAE call each (see ``encode_image``)."""
        return torch.stack([self.encode_image(x)[0] for x in images])

    def describe(self, request: EditRequest, knobs) -> str:
        return (f"instruction {request.instruction!r}, sI={knobs['image_guidance_scale']}, "
                f"sT={knobs['guidance_scale']}, steps={knobs['num_inference_steps']}, seed={request.seed}, "
                f"dtype={self.dtype}")

    def sampler_description(self) -> str:
        return "euler_ancestral_discrete (paper)" + ("" if self.fast is None else f", fast path {self.fast.as_dict()}")

    def guided_model(self, image_latent, text_emb, null_emb, guidance_scale, image_guidance_scale,
                     on_branches=None) -> GuidedUNet:
        """``model(x_in, t)``: one UNet call on the 3B batch ``[text+img, img only, uncond]`` and dual
        guidance of the model's output (eps, v or sample: guidance is affine with weights summing to 1).
        ``x_in`` is the sampler-scaled latent; the image latent is concatenated unscaled. The UNet is
        the fast path's prepared one when the editor has one."""
        unet = self._prepared if self.fast is not None else self._eager_unet
        return GuidedUNet(unet, image_latent, text_emb, null_emb, guidance_scale, image_guidance_scale,
                          dtype=self.dtype, region=self.region, on_branches=on_branches)

    def _eager_unet(self, sample: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]

    def guided_eps(self, x_in, t, image_latent, text_emb, null_emb, guidance_scale, image_guidance_scale):
        """One guided model call (``guided_model``) at sampler-scaled ``x_in`` and timestep ``t``."""
        t = torch.as_tensor(t, device=self.device)
        return self.guided_model(image_latent, text_emb, null_emb, guidance_scale, image_guidance_scale)(x_in, t)

    def chunk_model(self, chunk: Chunk, on_branches=None) -> GuidedUNet:
        """The guided model of a chunk: its image latents, prompts and per-request scales."""
        return self.guided_model(chunk.image_cond[0], chunk.text, chunk.null,
                                 chunk.knob("guidance_scale", device=self.device),
                                 chunk.knob("image_guidance_scale", device=self.device), on_branches)

    def sample(self, chunk: Chunk) -> torch.Tensor:
        name = chunk.knobs[0]["scheduler"]
        scheduler = scheduler_from(name, self.components.scheduler.config) if name not in (None, "paper") else self.scheduler
        if scheduler is None:
            return self.sample_paper(chunk)
        return sample_with_scheduler(self.chunk_model(chunk), chunk.image_cond[0].shape[1:], scheduler, chunk.steps,
                                     chunk.noise, device=self.device, dtype=torch.float32)

    def sample_paper(self, chunk: Chunk, *, on_branches=None, make_callback=None) -> torch.Tensor:
        """The paper's sampler (``ip2p.sampling.sample_euler_ancestral``) over the model's discrete
        sigmas, with the prepared denoiser; on the fast path its noise is pre-drawn (the same
        numbers). ``on_branches``: see ``GuidedUNet``; ``make_callback(sigmas, initial_noise)``
        returns the loop's per-step ``callback`` (post-edit's latent blend)."""
        shape = chunk.image_cond[0].shape[1:]
        with self.region("schedule"):
            model = self.chunk_model(chunk, on_branches)
            sigmas = get_sigmas(self._sigma_table, chunk.steps)
            noise = chunk.noise if self.fast is None else PredrawnNoise.for_euler_ancestral(
                chunk.seeds, shape, sigmas, dtype=self.noise_dtype, device=self.device)
            denoise = discrete_denoiser(model, self._sigma_table, self.prediction_type, self.device, sigmas=sigmas)
            n0 = noise.randn(shape)
            x = n0 * sigmas[0]
            callback = make_callback(sigmas, n0) if make_callback is not None else None
        return sample_euler_ancestral(denoise, x, sigmas, noise, callback=callback, region=self.region)

    # ------------------------------------------------------------ public API

    def edit(
        self,
        images,
        instructions: str | Sequence[str],
        *,
        image_guidance_scale=None,
        guidance_scale=None,
        num_inference_steps=None,
        seeds=0,
        scheduler=None,
        resize: str | None | type(Ellipsis) = ...,
        progress: bool = False,
        **knobs,
    ) -> torch.Tensor:
        """Edit ``images`` by ``instructions``; returns float ``[N, 3, H, W]`` in [0, 1].

        ``images``: a ``[N, 3, H, W]`` tensor in [0, 1], or a list of tensors, PIL images or
        paths. Every knob takes a scalar or one value per request (None: the declared default,
        ``declared_knobs``); a single image or a single instruction is broadcast. ``scheduler``: None for the paper's sampler, or a diffusers
        scheduler (instance, or class name such as ``"DDIMScheduler"``) built from the model's
        config. ``resize``: ``"paper"``, ``"diffusers"`` (floor to the VAE factor) or None;
        by default the editor's own ``resize`` (itself ``"paper"`` unless set at construction).
        Inputs that process to different sizes are refused before any sampling. Any other
        declared knob of the method (e.g. post-edit's ``mask_threshold``) is given as a keyword.
        """
        unknown = sorted(set(knobs) - set(self.declared_knobs))
        if unknown:
            raise TypeError(f"edit() got an unexpected keyword argument {unknown[0]!r}")
        if resize is ...:
            resize = self.resize
        given = {"image_guidance_scale": image_guidance_scale, "guidance_scale": guidance_scale,
                 "num_inference_steps": num_inference_steps}
        image_guidance_scale, guidance_scale, num_inference_steps = (
            self.knobs[k] if v is None else v for k, v in given.items())
        by_name = {"scheduler": scheduler} if isinstance(scheduler, str) and scheduler != "paper" else {}
        requests = _edit_requests(images, instructions, seeds, {
            "image_guidance_scale": image_guidance_scale, "guidance_scale": guidance_scale,
            "num_inference_steps": num_inference_steps, **knobs}, fixed={"resize": resize, **by_name})
        saved = self.scheduler
        if scheduler is not None and not isinstance(scheduler, str):
            self.scheduler = scheduler  # an instance: this call only
        try:
            return self.run_same_size(requests, progress=progress)
        finally:
            self.scheduler = saved


def _edit_requests(images, instructions, seeds, knobs: dict, fixed: dict) -> list[EditRequest]:
    """``edit()``'s arguments as one request per image (scalars and single entries broadcast).
    Values are passed as given (an integer-valued numpy/torch scalar becomes an int), so the knob
    declarations refuse what the CLI refuses: steps 1.5, seeds -5 or True."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    instructions = _instruction_list(instructions)
    if not len(images):
        raise KnobError("edit(): no images given (an empty batch); give at least one")
    n = max(len(images), len(instructions))
    cols = {name: broadcast(v, n, name) for name, v in [
        ("images", images), ("instructions", list(instructions)), ("seeds", seeds), *knobs.items()]}
    typed = {"image_guidance_scale": _number, "guidance_scale": _number, "num_inference_steps": _integer}
    return [EditRequest(image=cols["images"][i], instruction=cols["instructions"][i], seed=_integer(cols["seeds"][i]),
                        knobs={**{k: typed.get(k, lambda v: v)(cols[k][i]) for k in knobs}, **fixed})
            for i in range(n)]


def _instruction_list(instructions) -> list:
    """``edit()``'s instructions as a non-empty list (its entries are checked per request)."""
    if isinstance(instructions, str):
        return [instructions]
    if not isinstance(instructions, (list, tuple)):
        raise KnobError(f"edit(): instructions must be a text or a list of texts, got {instructions!r}")
    if not instructions:
        raise KnobError("edit(): no instructions given (an empty batch); give at least one")
    return list(instructions)


def _integer(v):
    """An integer given as a Python, numpy or 0-d torch integer, as ``int``; anything else unchanged
    (for the declarations to refuse by name)."""
    if isinstance(v, torch.Tensor) and v.ndim == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        return int(v)
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v


def _number(v):
    """A real number as ``float``; anything else unchanged (refused by the knob's declaration)."""
    if isinstance(v, torch.Tensor) and v.ndim == 0 and v.dtype != torch.bool:
        return float(v)
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v


def load_editor(source: str | os.PathLike = "world:ip2p", *, device=None, dtype=torch.float32, max_batch: int = 16,
                resize: str | None = "paper", local_files_only: bool | None = None, trust_pickle: bool = False,
                config: str | None = None, seed: int = 0, compile: bool = False, fast=None) -> InstructPix2PixEditor:
    """An editor from a built-in name (``tiny``, ``sd15``), ``world:ip2p``, a diffusers folder or
    hub id, or an original single-file checkpoint (``.safetensors``; ``.ckpt`` with ``trust_pickle``)."""
    components = load_components(source, kind="ip2p", local_files_only=local_files_only, trust_pickle=trust_pickle,
                                 config=config, seed=seed)
    return InstructPix2PixEditor(components, device=device, dtype=dtype, max_batch=max_batch, resize=resize,
                                 compile=compile, fast=fast)


__all__ = ["InstructPix2PixEditor", "load_editor", "paper_size", "resize_paper", "RESIZE_MODES"]
