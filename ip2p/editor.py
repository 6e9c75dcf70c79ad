"""The InstructPix2Pix editor: a batch of requests in, edited images out.

- Exact to the paper: dual classifier-free guidance (``ip2p.guidance``) for every sI, sT; image
  latents are the VAE posterior mode, unscaled, concatenated after the sampler's input scaling;
  default sampler is the paper's Euler ancestral over the model's discrete sigmas.
- Batched: requests with different knob values share UNet calls (a chunk of B requests is one
  UNet call on 3B samples); each distinct input image is VAE-encoded once and each distinct
  instruction embedded once per call.
- Reproducible per request: request ``i`` with seed ``s`` draws its initial latent and every
  per-step noise from its own ``torch.Generator().manual_seed(s)``, exactly what diffusers draws
  for that image alone, so its output does not depend on batch mates (DESIGN invariant 1).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import torch
from PIL import Image, ImageOps

from ip2p.errors import ImageReadError, NonFiniteOutputError
from ip2p.guidance import cfg_batch, split_cfg_output
from ip2p.models import Components, components_from_pipe, load_components, place_for_inference, editor_identity
from ip2p.protocol import EditRequest, resolve_knobs
from ip2p.text import PromptEncoder
from ip2p.sampling import (
    NoiseSource,
    discrete_sigmas,
    get_sigmas,
    sample_euler_ancestral,
    sample_with_scheduler,
    scheduler_from,
    sigma_to_t,
)
from ip2p.util.hashing import hash_tensor
from ip2p.util.io import load_pil, pil_to_tensor, tensor_to_pil

RESIZE_MODES = ("paper", "diffusers", None)


# ---------------------------------------------------------------- resizing

def paper_size(width: int, height: int, resolution: int = 512) -> tuple[int, int]:
    """The official script's output size: scale the long side to ``resolution``, round the short
    side *up* to a multiple of 64, then floor both sides to multiples of 64. Returns (W, H)."""
    f = resolution / max(width, height)
    f = math.ceil(min(width, height) * f / 64) * 64 / min(width, height)
    return int(width * f // 64) * 64, int(height * f // 64) * 64


def resize_paper(img: Image.Image, resolution: int = 512) -> Image.Image:
    """``ImageOps.fit`` (centre crop) with Lanczos to ``paper_size``, as the official script."""
    w, h = paper_size(img.width, img.height, resolution)
    return ImageOps.fit(img, (w, h), method=Image.Resampling.LANCZOS)


def _as_pil_or_tensor(image, index: int):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        return load_pil(image, what=f"input image {index}")
    if isinstance(image, torch.Tensor):
        x = image
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3 or x.shape[0] != 3:
            raise ImageReadError(f"input image {index}: expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
        if not torch.isfinite(x).all():
            raise ImageReadError(f"input image {index}: contains NaN or Inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ImageReadError(f"input image {index}: values must lie in [0, 1], got [{lo:.3f}, {hi:.3f}]")
        return x.detach().float().clamp(0, 1).cpu()
    raise ImageReadError(f"input image {index}: unsupported type {type(image).__name__} (give a tensor, PIL image or path)")


# ---------------------------------------------------------------- the editor

class InstructPix2PixEditor:
    """InstructPix2Pix behind the harness protocol (``ip2p.protocol.Editor``)."""

    name = "instructpix2pix"
    # knob -> default (the paper's: sI 1.5, sT 7.5, 100 steps)
    knobs: Mapping[str, Any] = {"image_guidance_scale": 1.5, "guidance_scale": 7.5, "num_inference_steps": 100}

    def __init__(
        self,
        components: Components,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        max_batch: int = 16,
        resize: str | None = "paper",
        resolution: int | None = None,
        compile: bool = False,
    ):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.components = components
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.max_batch = int(max_batch)
        self.resize = resize
        self.resolution = int(resolution or components.resolution or 512)
        self._identity: dict[str, Any] | None = None
        c = components
        self.unet = place_for_inference(c, self.device, dtype, compile=compile)
        sigmas = discrete_sigmas(torch.as_tensor(c.scheduler.alphas_cumprod))
        self._sigma_table = sigmas  # the model's training sigmas, CPU float32
        self.prompts = PromptEncoder(c.tokenizer, c.text_encoder, self.device, dtype)

    # ------------------------------------------------------------ construction

    @classmethod
    def from_pipe(cls, pipe, **kwargs) -> "InstructPix2PixEditor":
        """Wrap a diffusers ``StableDiffusionInstructPix2PixPipeline`` (components shared)."""
        kwargs.setdefault("device", pipe.device)
        kwargs.setdefault("dtype", pipe.unet.dtype)
        return cls(components_from_pipe(pipe), **kwargs)

    @property
    def vae_scale_factor(self) -> int:
        return self.components.vae_scale_factor

    def identity(self) -> dict[str, Any]:
        """Method, source and weights hashes: what outputs depend on besides the request."""
        if self._identity is None:
            self._identity = editor_identity(self.name, self.components, self.dtype,
                                             sampler="euler_ancestral_discrete (paper)", resize=self.resize,
                                             resolution=self.resolution)
        return dict(self._identity)

    # ------------------------------------------------------------ preprocessing

    def preprocess(self, image, resize: str | None = "paper", *, index: int = 0) -> torch.Tensor:
        """One input (tensor in [0,1], PIL image or path) -> float ``[3, H, W]`` in [0, 1]."""
        x = _as_pil_or_tensor(image, index)
        if resize == "paper":
            pil = x if isinstance(x, Image.Image) else tensor_to_pil(x)
            w, h = paper_size(pil.width, pil.height, self.resolution)
            if isinstance(x, torch.Tensor) and (w, h) == (pil.width, pil.height):
                return x  # already the paper size: no lossy round trip through 8 bits
            return pil_to_tensor(resize_paper(pil, self.resolution))
        if resize == "diffusers":
            from diffusers.image_processor import VaeImageProcessor

            f = self.vae_scale_factor
            w, h = (x.width, x.height) if isinstance(x, Image.Image) else (x.shape[2], x.shape[1])
            w2, h2 = w - w % f, h - h % f
            if isinstance(x, Image.Image):
                x = x if (w2, h2) == (w, h) else VaeImageProcessor(vae_scale_factor=f).resize(x, h2, w2)
                return pil_to_tensor(x)
            if (w2, h2) != (w, h):
                x = VaeImageProcessor(vae_scale_factor=f).resize(x[None], h2, w2)[0]
            return x
        if resize is None:
            t = pil_to_tensor(x) if isinstance(x, Image.Image) else x
            f = self.vae_scale_factor
            if t.shape[1] % f or t.shape[2] % f:
                raise ImageReadError(
                    f"input image {index}: size {t.shape[2]}x{t.shape[1]} is not a multiple of the VAE factor {f}; "
                    f"use resize='paper' or resize='diffusers'"
                )
            return t
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")

    # ------------------------------------------------------------ encoders (deduplicated)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text encoder hidden states ``[N, L, D]``, each distinct prompt encoded once."""
        return self.prompts(prompts)

    @torch.no_grad()
    def encode_images(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Image-conditioning latents: VAE posterior mode of ``2x - 1``, not scaled. One image per
        VAE call, as diffusers encodes it for one edit: batched convolutions round differently,
        and an image's latent must not depend on which images were encoded beside it."""
        vae = self.components.vae
        return torch.cat([vae.encode(2 * x[None].to(self.device, self.dtype) - 1).latent_dist.mode() for x in images])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.components.vae
        out = []
        for start in range(0, len(latents), self.max_batch):
            z = latents[start : start + self.max_batch].to(self.device, self.dtype)
            y = vae.decode(z / vae.config.scaling_factor).sample
            out.append((y.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    # ------------------------------------------------------------ public API

    def edit(
        self,
        images,
        instructions: str | Sequence[str],
        *,
        image_guidance_scale=1.5,
        guidance_scale=7.5,
        num_inference_steps=100,
        seeds=0,
        scheduler=None,
        resize: str | None | type(Ellipsis) = ...,
        progress: bool = False,
    ) -> torch.Tensor:
        """Edit ``images`` by ``instructions``; returns float ``[N, 3, H, W]`` in [0, 1].

        ``images``: a ``[N, 3, H, W]`` tensor in [0, 1], or a list of tensors, PIL images or
        paths. Every knob takes a scalar or one value per request; a single image or a single
        instruction is broadcast. ``scheduler``: None for the paper's sampler, or a diffusers
        scheduler (instance, or class name such as ``"DDIMScheduler"``) built from the model's
        config. ``resize``: ``"paper"``, ``"diffusers"`` (floor to the VAE factor) or None;
        by default the editor's own ``resize`` (itself ``"paper"`` unless set at construction).
        """
        if resize is ...:
            resize = self.resize
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if isinstance(instructions, str):
            instructions = [instructions]
        n = max(len(images), len(instructions))
        images = _broadcast(images, n, "images")
        instructions = _broadcast(list(instructions), n, "instructions")
        per = {
            "image_guidance_scale": _broadcast(image_guidance_scale, n, "image_guidance_scale"),
            "guidance_scale": _broadcast(guidance_scale, n, "guidance_scale"),
            "num_inference_steps": [int(s) for s in _broadcast(num_inference_steps, n, "num_inference_steps")],
            "seeds": [int(s) for s in _broadcast(seeds, n, "seeds")],
        }
        processed = [self.preprocess(img, resize, index=i) for i, img in enumerate(images)]
        sizes = {tuple(p.shape) for p in processed}
        outs = self._edit_processed(processed, instructions, per["image_guidance_scale"], per["guidance_scale"],
                                    per["num_inference_steps"], per["seeds"], scheduler, progress=progress)
        if len(sizes) > 1:
            raise ValueError(f"edited images differ in size {sorted(sizes)}; use run() or one size per call")
        return torch.stack(outs)

    def run(self, requests: Sequence[EditRequest]) -> list[torch.Tensor]:
        """Protocol entry point: knobs per request (``image_guidance_scale``, ``guidance_scale``,
        ``num_inference_steps``, optional ``resize``); one ``[3, H, W]`` image per request."""
        knobs = [resolve_knobs({**self.knobs, "resize": self.resize, "scheduler": None}, r.knobs, method=self.name)
                 for r in requests]
        processed = [self.preprocess(r.image, k["resize"], index=i) for i, (r, k) in enumerate(zip(requests, knobs))]
        scheds = {id(k["scheduler"]) for k in knobs}
        if len(scheds) > 1:
            raise ValueError("one scheduler per run() call")
        return self._edit_processed(
            processed,
            [r.instruction for r in requests],
            [float(k["image_guidance_scale"]) for k in knobs],
            [float(k["guidance_scale"]) for k in knobs],
            [int(k["num_inference_steps"]) for k in knobs],
            [int(r.seed) for r in requests],
            knobs[0]["scheduler"] if knobs else None,
            item_ids=[r.item_id for r in requests],
        )

    # ------------------------------------------------------------ the batched core

    @torch.no_grad()
    def _edit_processed(self, images, instructions, s_i, s_t, steps, seeds, scheduler, *, item_ids=None,
                        progress: bool = False) -> list[torch.Tensor]:
        n = len(images)
        outs: list[torch.Tensor | None] = [None] * n
        active = [i for i in range(n) if instructions[i] != ""]
        for i in range(n):
            if instructions[i] == "":  # the official script returns the resized input
                outs[i] = images[i]
        if not active:
            return outs  # type: ignore[return-value]
        sched = self._scheduler(scheduler)

        # each distinct image encoded once, each distinct instruction embedded once
        keys = [hash_tensor(images[i]) for i in active]
        distinct = list(OrderedDict.fromkeys(keys))
        first = {k: active[keys.index(k)] for k in distinct}
        lat = dict(zip(distinct, self.encode_images([images[first[k]] for k in distinct])))
        img_lat = {i: lat[k] for i, k in zip(active, keys)}
        text = dict(zip(active, self.encode_text([instructions[i] for i in active])))
        null = self.encode_text([""])

        groups: dict[tuple, list[int]] = OrderedDict()
        for i in active:
            groups.setdefault((tuple(images[i].shape), steps[i]), []).append(i)
        chunks = [(g, idx[s : s + self.max_batch]) for g, idx in groups.items() for s in range(0, len(idx), self.max_batch)]
        bar = _progress(chunks, progress)
        for (_, n_steps), idx in bar:
            latents = self._sample(
                torch.stack([img_lat[i] for i in idx]),
                torch.stack([text[i] for i in idx]),
                null,
                [s_t[i] for i in idx],
                [s_i[i] for i in idx],
                n_steps,
                [seeds[i] for i in idx],
                sched,
            )
            decoded = self.decode(latents).cpu()
            check_finite(decoded, latents, [
                f"{_who(item_ids, i)}: the model produced NaN/Inf (instruction {instructions[i]!r}, sI={s_i[i]}, "
                f"sT={s_t[i]}, steps={steps[i]}, seed={seeds[i]}, dtype={self.dtype})" for i in idx])
            for j, i in enumerate(idx):
                outs[i] = decoded[j]
        return outs  # type: ignore[return-value]

    def _scheduler(self, scheduler):
        if scheduler is None or scheduler == "paper":
            return None
        return scheduler_from(scheduler, self.components.scheduler.config)

    def guided_eps(self, x_in, t, image_latent, text_emb, null_emb, guidance_scale, image_guidance_scale):
        """One UNet call on the 3B batch ``[text+img, img only, uncond]`` and dual guidance.
        ``x_in`` is the sampler-scaled latent; the image latent is concatenated unscaled."""
        b = x_in.shape[0]
        z3, text3, image3 = cfg_batch(x_in.to(self.dtype), text_emb, null_emb, image_latent.to(self.dtype))
        t3 = torch.as_tensor(t, device=self.device).reshape(-1).expand(3 * b)
        out = self.unet(torch.cat([z3, image3], dim=1), t3, encoder_hidden_states=text3, return_dict=False)[0]
        return split_cfg_output(out.float(), guidance_scale, image_guidance_scale)

    def _sample(self, image_latent, text_emb, null_emb, s_t, s_i, n_steps, seeds, scheduler) -> torch.Tensor:
        noise = NoiseSource.from_seeds(seeds, dtype=torch.float32, device=self.device)
        s_t_t = torch.tensor(s_t, dtype=torch.float32, device=self.device)
        s_i_t = torch.tensor(s_i, dtype=torch.float32, device=self.device)

        def eps_model(x_in: torch.Tensor, t) -> torch.Tensor:
            return self.guided_eps(x_in, t, image_latent, text_emb, null_emb, s_t_t, s_i_t)

        shape = image_latent.shape[1:]
        if scheduler is None:
            sigmas = get_sigmas(self._sigma_table, n_steps)
            x = noise.randn(shape) * sigmas[0]

            def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
                c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
                t = sigma_to_t(torch.tensor([sigma]), self._sigma_table).to(self.device)
                return x - sigma * eps_model(x * c_in, t)

            return sample_euler_ancestral(denoise, x, sigmas, noise)
        return sample_with_scheduler(eps_model, shape, scheduler, n_steps, noise, device=self.device, dtype=torch.float32)


def _who(item_ids, i: int) -> str:
    return f"item {item_ids[i]!r}" if item_ids and item_ids[i] else f"request {i}"


def check_finite(images: torch.Tensor, latents: torch.Tensor, messages: Sequence[str]) -> None:
    """Raise NonFiniteOutputError with ``messages[j]`` for the first sample j whose decoded image
    or final latent holds NaN or Inf."""
    bad = ~(torch.isfinite(images.flatten(1)).all(1) & torch.isfinite(latents.flatten(1)).all(1).cpu())
    if bad.any():
        raise NonFiniteOutputError(messages[int(bad.nonzero()[0])])


def _broadcast(value, n: int, name: str) -> list:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if len(value) == 1:
            return list(value) * n
        raise ValueError(f"{name}: got {len(value)} values for {n} requests (give 1 or {n})")
    return [value] * n


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="editing", unit="batch")


def load_editor(source: str | os.PathLike = "world:ip2p", *, device=None, dtype=torch.float32, max_batch: int = 16,
                resize: str | None = "paper", local_files_only: bool | None = None, trust_pickle: bool = False,
                config: str | None = None, seed: int = 0, compile: bool = False) -> InstructPix2PixEditor:
    """An editor from a built-in name (``tiny``, ``sd15``), ``world:ip2p``, a diffusers folder or
    hub id, or an original single-file checkpoint (``.safetensors``; ``.ckpt`` with ``trust_pickle``)."""
    components = load_components(source, local_files_only=local_files_only, trust_pickle=trust_pickle,
                                 config=config, seed=seed)
    return InstructPix2PixEditor(components, device=device, dtype=dtype, max_batch=max_batch, resize=resize,
                                 compile=compile)


__all__ = ["InstructPix2PixEditor", "load_editor", "paper_size", "resize_paper", "RESIZE_MODES"]
