"""The one batching core of every diffusion editing method, so that a method is only its own math.

``DiffusionEditor.run(requests)``:

1. knobs resolved per request against the method's declared knobs (``ip2p.protocol.Knob``), inputs
   processed (``preprocess``: the paper's resize, diffusers' floor to the VAE factor, or none);
2. requests the method passes through unchanged (``passthrough``: an empty instruction, a zero
   strength) return the processed input;
3. each distinct input image is encoded once (``encode_image``: the method's image conditioning,
   one image per VAE call, as diffusers encodes one edit) and each distinct prompt once
   (``prompt``: the instruction, the output caption ...);
4. requests are grouped by image shape and step count, in the method's order (``order``), chunked
   by ``max_batch`` and handed to the method's ``sample`` (its conditioning and guided denoiser);
5. latents are decoded, checked for NaN/Inf (naming the item, its knobs and seed), progress shown.

A request with seed ``s`` draws all of its noise from its own ``torch.Generator().manual_seed(s)``
(``ip2p.sampling.NoiseSource``), so its output never depends on batch mates (DESIGN invariant 1).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
from PIL import Image, ImageOps

from ip2p.errors import ImageReadError, NonFiniteOutputError
from ip2p.models import Components, components_from_pipe, editor_identity, place_for_inference
from ip2p.protocol import EditRequest, Knob, check_request, knob_defaults, resolve_knobs, who
from ip2p.sampling import NoiseSource, no_region, scheduler_from
from ip2p.text import PromptEncoder
from ip2p.util.hashing import hash_tensor
from ip2p.util.io import load_pil, pil_to_tensor, tensor_to_pil
from ip2p.util.limits import check_processed_size

RESIZE_MODES = ("paper", "diffusers", None)


_RESIZE_DOCS = {"paper": "paper (to ~resolution, multiple of 64)", "diffusers": "diffusers (multiple of 8)",
                None: "null (as is)"}


def resize_knob(default: str | None = "paper", choices: Sequence[str | None] = RESIZE_MODES) -> Knob:
    """The ``resize`` knob, the one declaration every method uses: ``choices`` are the modes the
    method supports (a subset of ``RESIZE_MODES``), ``default`` its own (or the editor's)."""
    unknown = [c for c in choices if c not in RESIZE_MODES]
    if unknown:
        raise ValueError(f"resize: unknown mode {unknown[0]!r}; the modes are {RESIZE_MODES}")
    return Knob("choice", default=default, choices=tuple(choices),
                doc="input resizing: " + ", ".join(_RESIZE_DOCS[c] for c in choices))


RESIZE_KNOB = resize_knob()


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


def as_pil_or_tensor(image, index: int):
    """An input as given (tensor in [0, 1], PIL image or path) -> a checked CPU tensor or an RGB PIL image."""
    if isinstance(image, Image.Image):  # any mode, through the one reader's conversion (16-bit, alpha, ...)
        return image if image.mode == "RGB" else tensor_to_pil(pil_to_tensor(image))
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


def process_input(image, resize: str | None, resolution: int, *, index: int = 0) -> torch.Tensor:
    """One input (tensor in [0, 1], PIL image or path) as float ``[3, H, W]`` in [0, 1]: as given
    (``resize=None``) or the official script's resize to ``resolution`` (``"paper"``; a tensor already
    at that size is returned as it is, with no lossy round trip through 8 bits)."""
    x = as_pil_or_tensor(image, index)
    if resize is None:
        return pil_to_tensor(x) if isinstance(x, Image.Image) else x
    if resize != "paper":
        raise ValueError(f"resize must be 'paper' or None here, got {resize!r}")
    w, h = (x.width, x.height) if isinstance(x, Image.Image) else (int(x.shape[-1]), int(x.shape[-2]))
    if min(w, h) < 1:
        raise ImageReadError(f"input image {index}: size {w}x{h} has no pixels")
    too_big = check_processed_size(*paper_size(w, h, resolution), resolution=resolution, vae_factor=1,
                                   where=f"input image {index} ({w}x{h})", how="the paper's resize")
    if too_big:  # refused before the resize (an 8x2000 input would be resized to 64x16000 and sampled)
        raise ImageReadError(too_big)
    pil = x if isinstance(x, Image.Image) else tensor_to_pil(x)
    if isinstance(x, torch.Tensor) and paper_size(pil.width, pil.height, resolution) == (pil.width, pil.height):
        return x
    return pil_to_tensor(resize_paper(pil, resolution))


# ---------------------------------------------------------------- one chunk of work

@dataclass
class Chunk:
    """What a method's ``sample`` gets: up to ``max_batch`` requests of one shape and step count.

    ``image_cond``: the method's image conditioning (``encode_image``'s tuple), each part stacked
    ``[B, ...]``; ``text``: prompt embeddings ``[B, L, D]``; ``null``: the empty prompt's ``[1, L, D]``;
    ``knobs``: resolved knobs per request; ``noise``: per-request generators."""

    indices: list[int]
    image_cond: tuple[torch.Tensor, ...]
    text: torch.Tensor
    null: torch.Tensor
    knobs: list[dict[str, Any]]
    seeds: list[int]
    steps: int
    noise: NoiseSource

    def knob(self, name: str, dtype=torch.float32, device=None) -> torch.Tensor:
        """One knob of every request as a ``[B]`` tensor."""
        return torch.tensor([float(k[name]) for k in self.knobs], dtype=dtype, device=device)


def check_finite(images: torch.Tensor, latents: torch.Tensor, messages: Sequence[str]) -> None:
    """Raise NonFiniteOutputError with ``messages[j]`` for the first sample j whose decoded image
    or final latent holds NaN or Inf."""
    bad = ~(torch.isfinite(images.flatten(1)).all(1) & torch.isfinite(latents.flatten(1)).all(1).cpu())
    if bad.any():
        raise NonFiniteOutputError(messages[int(bad.nonzero()[0])])


def broadcast(value, n: int, name: str) -> list:
    """A scalar, or 1 or ``n`` values, as a list of ``n`` (ValueError naming ``name`` otherwise)."""
    if isinstance(value, torch.Tensor) and name != "images":
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if len(value) == 1:
            return list(value) * n
        raise ValueError(f"{name}: got {len(value)} values for {n} requests (give 1 or {n})")
    return [value] * n


def _progress(items: list, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch")


# ---------------------------------------------------------------- the base of every diffusion method

class DiffusionEditor:
    """Inputs, knobs, encode-once, grouping, chunking, decoding, NaN checks and progress for a
    latent-diffusion editing method. A subclass sets ``name``, ``kind`` (the pipeline kind the loading
    layer must give: "ip2p" or "t2i") and ``declared_knobs``, and supplies ``prompt``,
    ``encode_image`` and ``sample`` (and optionally ``passthrough``, ``order``, ``describe``,
    ``identity_extra``)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "ip2p"
    declared_knobs: ClassVar[Mapping[str, Knob]] = {}
    knobs: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        cls.knobs = knob_defaults(cls.declared_knobs)  # defaults, read from the one declaration

    def __init__(
        self,
        components,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        max_batch: int = 16,
        resize: str | None = "paper",
        resolution: int | None = None,
        scheduler=None,
        compile: bool = False,
    ):
        """``components``: ``Components`` or any object with ``unet, vae, text_encoder, tokenizer,
        scheduler`` (e.g. a diffusers pipeline), checked as this method's ``kind``. ``scheduler``:
        None for the method's default sampler, a diffusers scheduler instance, or a class name
        (``"DDIMScheduler"``) built from the model's scheduler config. ``max_batch``: requests per
        model call (each becomes several samples under guidance)."""
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        c = components_from_pipe(components, kind=self.kind)
        self.components: Components = c
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.max_batch = int(max_batch)
        self.resize = resize
        self.resolution = int(resolution or c.resolution or 512)
        self.unet = place_for_inference(c, self.device, dtype, compile=compile)
        self.scheduler = None if scheduler is None else scheduler_from(scheduler, c.scheduler.config)
        self.prompts = PromptEncoder(c.tokenizer, c.text_encoder, self.device, dtype)
        self._identity: dict[str, Any] | None = None
        # timing hook: ``region(name)`` encloses text encoding, VAE encode/decode and the sampler's
        # named parts (``bench.profiler`` sets its timer here; a no-op otherwise)
        self.region = no_region

    @classmethod
    def from_pipe(cls, pipe, **kwargs):
        """Wrap a diffusers pipeline (components shared)."""
        kwargs.setdefault("device", pipe.device)
        kwargs.setdefault("dtype", pipe.unet.dtype)
        return cls(components_from_pipe(pipe, kind=cls.kind), **kwargs)

    @property
    def vae_scale_factor(self) -> int:
        return self.components.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.components.prediction_type

    # ------------------------------------------------------------ what a method supplies

    def prompt(self, request: EditRequest, knobs: Mapping[str, Any], index: int) -> str:
        """The text the model is conditioned on for this request."""
        raise NotImplementedError

    def passthrough(self, request: EditRequest, knobs: Mapping[str, Any]) -> bool:
        """True when the request's edit is its processed input (no sampling)."""
        return False

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The image conditioning of one processed input ``[3, H, W]`` (batch-free tensors)."""
        raise NotImplementedError

    def sample(self, chunk: Chunk) -> torch.Tensor:
        """Final latents ``[B, C, h, w]`` (float32) of a chunk."""
        raise NotImplementedError

    def group(self, knobs: Mapping[str, Any]) -> Any:
        """Requests of different ``group`` values never share a chunk (e.g. another scheduler)."""
        return None

    def finish(self, index: int, request: EditRequest, knobs: Mapping[str, Any], decoded: torch.Tensor,
               processed: torch.Tensor) -> torch.Tensor:
        """The request's output from its decoded image (``processed``: its input as processed);
        a method may post-process pixels here (EditWorld's post-edit composites the input back)."""
        return decoded

    def order(self, knobs: Mapping[str, Any]) -> Any:
        """Sort key of requests inside a group (chunks are cut in this order)."""
        return 0

    def describe(self, request: EditRequest, knobs: Mapping[str, Any]) -> str:
        """Knobs and seed of a request, for error messages."""
        shown = ", ".join(f"{k}={v}" for k, v in knobs.items() if k not in ("resize", "scheduler"))
        return f"{shown}, seed={request.seed}, dtype={self.dtype}"

    @property
    def noise_dtype(self) -> torch.dtype:
        """The dtype noise is drawn in (as the diffusers pipeline the method mirrors)."""
        return torch.float32

    def sampler_description(self) -> str:
        return type(self.scheduler).__name__ if self.scheduler is not None else "default"

    def identity_extra(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------ shared pieces

    def identity(self) -> dict[str, Any]:
        """Method, source, weights hashes, dtype, sampler: what outputs depend on besides the request."""
        if self._identity is None:
            self._identity = editor_identity(self.name, self.components, self.dtype,
                                             sampler=self.sampler_description(), resize=self.resize,
                                             resolution=self.resolution, **self.identity_extra())
        return dict(self._identity)

    def preprocess(self, image, resize: str | None = "paper", *, index: int = 0) -> torch.Tensor:
        """One input (tensor in [0,1], PIL image or path) -> float ``[3, H, W]`` in [0, 1], at a size
        this model can take (``ip2p.util.limits``: ImageReadError naming the sizes otherwise)."""
        x = self._preprocess(image, resize, index)
        why = check_processed_size(int(x.shape[-1]), int(x.shape[-2]), resolution=self.resolution,
                                   vae_factor=self.vae_scale_factor, where=f"input image {index}",
                                   how=f"resize={resize!r}")
        if why:
            raise ImageReadError(why)
        return x

    def _preprocess(self, image, resize: str | None, index: int) -> torch.Tensor:
        if resize == "paper":
            return process_input(image, resize, self.resolution, index=index)
        x = as_pil_or_tensor(image, index)
        if resize == "diffusers":
            from diffusers.image_processor import VaeImageProcessor

            f = self.vae_scale_factor
            w, h = (x.width, x.height) if isinstance(x, Image.Image) else (x.shape[2], x.shape[1])
            w2, h2 = w - w % f, h - h % f
            why = check_processed_size(w2, h2, resolution=self.resolution, vae_factor=f,
                                       where=f"input image {index} ({w}x{h})", how="resize='diffusers'")
            if why:
                raise ImageReadError(why)
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

    def resolve(self, request: EditRequest, index: int = 0) -> dict[str, Any]:
        """The request's knobs over the method's defaults (the editor's own ``resize`` included)."""
        declared = {**self.declared_knobs, "resize": resize_knob(self.resize)}
        return resolve_knobs(declared, request.knobs, method=self.name, item_id=request.item_id, index=index)

    def metric_input(self, request: EditRequest) -> torch.Tensor:
        """The input as this method processed it: what metrics compare its output with."""
        return self.preprocess(request.image, self.resolve(request)["resize"])

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text encoder hidden states ``[N, L, D]``, each distinct prompt encoded once."""
        return self.prompts(prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` in [0, 1] from scaled latents, ``max_batch`` per VAE call."""
        vae = self.components.vae
        out = []
        for start in range(0, len(latents), self.max_batch):
            z = latents[start : start + self.max_batch].to(self.device, self.dtype)
            y = vae.decode(z / vae.config.scaling_factor).sample
            out.append((y.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    # ------------------------------------------------------------ the batching core

    def prepare(self, requests: Sequence[EditRequest]) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        """Resolved knobs and processed inputs of every request; every request is checked (knobs,
        image, prompt) before any work starts."""
        for i, r in enumerate(requests):
            check_request(r, i)
        knobs = [self.resolve(r, i) for i, r in enumerate(requests)]
        images = [self.preprocess(r.image, k["resize"], index=i) for i, (r, k) in enumerate(zip(requests, knobs))]
        for i, (r, k) in enumerate(zip(requests, knobs)):
            if not self.passthrough(r, k):
                self.prompt(r, k, i)  # raises naming the item when the request lacks its prompt
        return knobs, images

    def run(self, requests: Sequence[EditRequest], *, progress: bool = False) -> list[torch.Tensor]:
        """Protocol entry point: one ``[3, H, W]`` image in [0, 1] per request, in order."""
        knobs, images = self.prepare(requests)
        return self._run_prepared(list(requests), knobs, images, progress=progress)

    def run_same_size(self, requests: Sequence[EditRequest], *, progress: bool = False) -> torch.Tensor:
        """``run`` for requests whose outputs must stack: mixed processed sizes are refused before
        any sampling. Returns ``[N, 3, H, W]``."""
        knobs, images = self.prepare(requests)
        sizes = sorted({tuple(x.shape) for x in images})
        if len(sizes) > 1:
            raise ValueError(f"the inputs process to different sizes {sizes}; edit them in separate calls "
                             f"(or use run(), which returns a list)")
        return torch.stack(self._run_prepared(list(requests), knobs, images, progress=progress))

    @torch.no_grad()
    def _run_prepared(self, requests, knobs, images, *, progress: bool = False) -> list[torch.Tensor]:
        n = len(requests)
        outs: list[torch.Tensor | None] = [None] * n
        active = []
        for i in range(n):
            if self.passthrough(requests[i], knobs[i]):
                outs[i] = images[i]
            else:
                active.append(i)
        if not active:
            return outs  # type: ignore[return-value]
        cond_of, text, null = self._encode_once(requests, knobs, images, active)
        for steps, idx in _progress(self._chunks(knobs, images, active), progress, self.name or "editing"):
            seeds = [int(requests[i].seed) for i in idx]
            chunk = Chunk(
                indices=idx,
                image_cond=tuple(torch.stack(parts) for parts in zip(*(cond_of[i] for i in idx))),
                text=torch.stack([text[i] for i in idx]),
                null=null,
                knobs=[knobs[i] for i in idx],
                seeds=seeds,
                steps=steps,
                noise=NoiseSource.from_seeds(seeds, dtype=self.noise_dtype, device=self.device),
            )
            latents = self.sample(chunk)
            with self.region("vae_decode"):
                decoded = self.decode(latents).cpu()
            check_finite(decoded, latents, [
                f"{who(requests[i].item_id, i)}: the model produced NaN/Inf ({self.describe(requests[i], knobs[i])})"
                for i in idx])
            for j, i in enumerate(idx):
                outs[i] = self.finish(i, requests[i], knobs[i], decoded[j], images[i])
        return outs  # type: ignore[return-value]

    def _encode_once(self, requests, knobs, images, active: list[int]):
        """Image conditioning per active request (each distinct image encoded once), prompt
        embeddings per active request (each distinct prompt once) and the empty prompt's."""
        with self.region("vae_encode"):
            keys = [hash_tensor(images[i]) for i in active]
            cond: dict[str, tuple[torch.Tensor, ...]] = {}
            for i, k in zip(active, keys):
                if k not in cond:
                    cond[k] = tuple(self.encode_image(images[i]))
            cond_of = dict(zip(active, (cond[k] for k in keys)))
        with self.region("text_encode"):
            text = dict(zip(active, self.encode_text([self.prompt(requests[i], knobs[i], i) for i in active])))
            null = self.encode_text([""])
        return cond_of, text, null

    def _chunks(self, knobs, images, active: list[int]) -> list[tuple[int, list[int]]]:
        """``(steps, indices)`` per chunk: requests grouped by shape, steps and ``group``, in the
        method's ``order``, cut at ``max_batch``."""
        groups: dict[tuple, list[int]] = OrderedDict()
        for i in sorted(active, key=lambda i: self.order(knobs[i])):
            key = (tuple(images[i].shape), int(knobs[i]["num_inference_steps"]), self.group(knobs[i]))
            groups.setdefault(key, []).append(i)
        return [(steps, idx[s : s + self.max_batch]) for (_, steps, _), idx in groups.items()
                for s in range(0, len(idx), self.max_batch)]


__all__ = ["DiffusionEditor", "Chunk", "as_pil_or_tensor", "process_input", "RESIZE_MODES", "RESIZE_KNOB", "resize_knob", "paper_size", "resize_paper",
           "check_finite", "broadcast"]
