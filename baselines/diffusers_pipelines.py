"""Every instruction-editing pipeline of diffusers behind the one protocol (FLUX.1 Kontext, Qwen-Image-Edit,
SDXL InstructPix2Pix, LEDITS++, DiffEdit, diffusers' own InstructPix2Pix ...), run by diffusers' own code.

A family (``Family``) names the pipeline classes it loads, its knobs (declared once: the call's own
parameters with the model's published recommended settings as defaults), the item fields it needs,
how one chunk of requests becomes pipeline calls (``flow``: one edit call; LEDITS++'s inversion then
edit; DiffEdit's mask, inversion, edit) and whether requests may share a call. Methods registered:
one per family (``flux-kontext``, ``qwen-image-edit`` ...) and ``diffusers``, which picks the family
from the pipeline class in the model's ``model_index.json`` (or ``options: {pipeline: <class>}``).

- Seeding: request ``i`` gets its own ``torch.Generator().manual_seed(seed_i)`` in the call's
  generator list, so its noise never depends on batch mates. Families whose pipelines keep per-call
  state (inversions) or whose conditioning mixes batch mates run one request per call (``batchable``).
- Batching: requests with the same knobs and processed size go through one call, ``max_batch`` at a time.
- Sizes: inputs are resized to the model's native pixel area (``resize: model``) or kept (``null``),
  then floored to the family's size multiple; the pipeline is asked for exactly that output size.
- Memory options (``dtype``, ``cpu_offload``, ``attention_backend``) pass through to diffusers and are
  part of the editor's identity (so every result row records them).
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ip2p.errors import DataRowError, ModelLoadError, SpecError
from ip2p.models import load_pipeline, pipeline_class_name
from ip2p.protocol import EditRequest, Knob, knob_defaults, resolve_knobs, who
from ip2p.registry import register_method

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESIZE = Knob("choice", default="model", choices=("model", None),
              doc="model: scale the input to the model's native pixel area; null: as given; then floored "
                  "to the model's size multiple")


def _steps(default: int) -> Knob:
    return Knob("int", default=default, minimum=1, doc="denoising steps")


def _cfg(default: float, doc: str = "classifier-free guidance scale on the prompt") -> Knob:
    return Knob("float", default=default, minimum=0.0, doc=doc)


@dataclass(frozen=True)
class Family:
    """One editing pipeline family: what it loads, its knobs, the item fields it needs, how it runs."""

    name: str
    classes: tuple[str, ...]  # pipeline classes it runs; the first is what it loads a folder as
    hub_id: str
    knobs: Mapping[str, Knob]
    fields: tuple[str, ...] = ("instruction",)
    flow: str = "edit"  # edit | ledits | diffedit
    batchable: bool = True
    resolution: int = 1024
    params_b: float = 0.0  # parameters, billions (all components): the memory estimate
    accepts: tuple[str, ...] = ()  # other model_index classes it loads (e.g. a StableDiffusionPipeline folder)
    recommended: str = ""
    tested: str = ""  # how the tests exercise it, or why they do not
    note: str = ""

    @property
    def declared_knobs(self) -> dict[str, Knob]:
        return {**self.knobs, "resize": RESIZE}

    def memory_gib(self, dtype_bytes: int = 2) -> float:
        """Weights alone in ``dtype_bytes`` per parameter (an estimate from the parameter count)."""
        return self.params_b * 1e9 * dtype_bytes / 2**30


_NEG = Knob("str", default=" ", nullable=True, doc="negative prompt (true CFG runs only when one is given)")
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("diffusers-ip2p", ("StableDiffusionInstructPix2PixPipeline",), "timbrooks/instructpix2pix",
           {"num_inference_steps": _steps(100), "guidance_scale": _cfg(7.5),
            "image_guidance_scale": _cfg(1.5, "image guidance scale (sI)")},
           resolution=512, params_b=1.07, recommended="sT 7.5, sI 1.5, 100 steps",
           tested="tiny random (tests/test_diffusers_pipelines.py)", note="diffusers' own InstructPix2Pix code"),
    Family("sdxl-ip2p", ("StableDiffusionXLInstructPix2PixPipeline",), "diffusers/sdxl-instructpix2pix-768",
           {"num_inference_steps": _steps(100), "guidance_scale": _cfg(5.0),
            "image_guidance_scale": _cfg(1.5, "image guidance scale (sI)")},
           resolution=768, params_b=3.5, recommended="sT 5.0, sI 1.5, 100 steps (pipeline defaults); "
           "CosXL-Edit: the same class", tested="tiny random (tests/test_diffusers_pipelines.py)"),
    Family("flux-kontext", ("FluxKontextPipeline",), "black-forest-labs/FLUX.1-Kontext-dev",
           {"num_inference_steps": _steps(28), "guidance_scale": _cfg(2.5, "distilled guidance scale"),
            "true_cfg_scale": _cfg(1.0, "true CFG scale (runs with a negative prompt only)")},
           params_b=16.9, recommended="guidance 2.5, 28 steps", tested="tiny random (tests/test_diffusers_pipelines.py)"),
    Family("qwen-image-edit", ("QwenImageEditPipeline",), "Qwen/Qwen-Image-Edit",
           {"num_inference_steps": _steps(50), "true_cfg_scale": _cfg(4.0, "true CFG scale"), "negative_prompt": _NEG},
           params_b=28.7, batchable=False, recommended="true CFG 4.0, 50 steps, negative prompt ' '",
           note="prompts of different lengths in one call change each other's result (measured): one per call",
           tested="tiny random (tests/test_diffusers_pipelines.py)"),
    Family("qwen-image-edit-plus", ("QwenImageEditPlusPipeline",), "Qwen/Qwen-Image-Edit-2509",
           {"num_inference_steps": _steps(40), "true_cfg_scale": _cfg(4.0, "true CFG scale"), "negative_prompt": _NEG},
           params_b=28.7, batchable=False, recommended="true CFG 4.0, 40 steps, negative prompt ' '",
           tested="tiny random (tests/test_diffusers_pipelines.py)",
           note="a list of images is one multi-image edit here, so requests run one per call"),
    Family("ledits-pp", ("LEditsPPPipelineStableDiffusion",), "stable-diffusion-v1-5/stable-diffusion-v1-5",
           {"num_inversion_steps": _steps(50), "skip": Knob("float", default=0.1, minimum=0.0, maximum=0.99,
                                                            doc="share of the inversion skipped"),
            "source_guidance_scale": _cfg(3.5, "guidance of the inversion on the input caption"),
            "edit_guidance_scale": _cfg(10.0, "edit guidance scale"),
            "edit_threshold": Knob("float", default=0.75, minimum=0.0, maximum=1.0, doc="semantic mask threshold"),
            "edit_warmup_steps": Knob("int", default=0, minimum=0, doc="steps before the edit guidance starts")},
           flow="ledits", batchable=False, resolution=512, params_b=1.07, accepts=("StableDiffusionPipeline",),
           recommended="inversion 50 steps, skip 0.1; edit guidance 10, threshold 0.75 (diffusers' docs)",
           tested="tiny random (tests/test_diffusers_pipelines.py)",
           note="its inversion is pipeline state: one request per call; the instruction is the editing prompt, "
                "the input caption (if any) the source prompt"),
    Family("diffedit", ("StableDiffusionDiffEditPipeline",), "stabilityai/stable-diffusion-2-1",
           {"num_inference_steps": _steps(50), "guidance_scale": _cfg(7.5),
            "inpaint_strength": Knob("float", default=0.8, minimum=0.0, maximum=1.0, doc="inversion depth"),
            "mask_encode_strength": Knob("float", default=0.5, minimum=0.0, maximum=1.0, doc="mask noise level"),
            "num_maps_per_mask": Knob("int", default=10, minimum=1, doc="noise draws averaged into the mask")},
           fields=("input_caption", "output_caption"), flow="diffedit", batchable=False, resolution=768,
           params_b=1.3, accepts=("StableDiffusionPipeline",), recommended="pipeline defaults (50 steps, 7.5, 0.8)",
           tested="tiny random (tests/test_diffusers_pipelines.py)",
           note="mask from the input and output captions, DDIM inversion, then the edit; one request per call"),
    Family("longcat-image-edit", ("LongCatImageEditPipeline",), "meituan-longcat/LongCat-Image-Edit",
           {"num_inference_steps": _steps(50), "guidance_scale": _cfg(4.5), "negative_prompt": _NEG},
           params_b=14.0, batchable=False, recommended="guidance 4.5, 50 steps (pipeline defaults)",
           tested="untested: its tiny components (Qwen2.5-VL encoder, text processor) not built yet"),
    Family("joyimage-edit", ("JoyImageEditPipeline",), "jdh-algo/JoyImage-Edit",
           {"num_inference_steps": _steps(40), "guidance_scale": _cfg(4.0)},
           params_b=20.0, batchable=False, recommended="guidance 4.0, 40 steps (pipeline defaults)",
           tested="untested: its tiny components not built yet"),
    Family("bria-fibo-edit", ("BriaFiboEditPipeline",), "briaai/FIBO-Edit",
           {"num_inference_steps": _steps(30), "guidance_scale": _cfg(5.0)},
           params_b=12.0, batchable=False, recommended="guidance 5, 30 steps (pipeline defaults)",
           tested="untested: its prompt is a structured JSON caption, which items here do not have"),
    Family("flux2-edit", ("Flux2Pipeline", "Flux2KleinPipeline"), "black-forest-labs/FLUX.2-dev",
           {"num_inference_steps": _steps(50), "guidance_scale": _cfg(4.0)},
           params_b=56.0, batchable=False, recommended="guidance 4.0, 50 steps (pipeline defaults)",
           tested="untested: no tiny Mistral3 / Qwen3 text encoder built here",
           note="the input is the reference image; a list of images would be several references: one per call"),
]}


def family_of(class_name: str) -> Family:
    """The family that runs pipeline class ``class_name`` (SpecError listing the supported classes)."""
    for fam in FAMILIES.values():
        if class_name in fam.classes:
            return fam
    known = sorted(c for f in FAMILIES.values() for c in f.classes)
    raise SpecError(f"pipeline class {class_name!r} is not an editing family here; supported: {', '.join(known)}")


# ---------------------------------------------------------------- the editor


class PipelineEditor:
    """A diffusers editing pipeline behind ``ip2p.protocol.Editor``."""

    def __init__(self, pipe, family: Family, *, source: str = "", device=None, dtype: str = "fp32",
                 max_batch: int = 8, cpu_offload: bool = False, attention_backend: str | None = None):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.pipe, self.family, self.source = pipe, family, source
        self.name = family.name
        self.declared_knobs = family.declared_knobs
        self.knobs = knob_defaults(self.declared_knobs)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype, self.cpu_offload, self.attention_backend = dtype, bool(cpu_offload), attention_backend
        self.max_batch = int(max_batch) if family.batchable else 1
        self.call_params = set(inspect.signature(type(pipe).__call__).parameters)
        if attention_backend:
            denoiser(pipe).set_attention_backend(attention_backend)
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        self._identity: dict[str, Any] | None = None

    @property
    def multiple(self) -> int:
        """Output sides are multiples of this: the VAE factor, times 2 for patch-packing transformers."""
        f = int(getattr(self.pipe, "vae_scale_factor", 8) or 8)
        return f * (2 if hasattr(self.pipe, "transformer") else 1)

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            import diffusers

            self._identity = {
                "method": self.name, "pipeline": type(self.pipe).__name__, "source": self.source,
                "weights_hash": pipeline_weights_hash(self.pipe), "dtype": self.dtype, "cpu_offload": self.cpu_offload,
                "attention_backend": self.attention_backend, "resolution": self.family.resolution,
                "batch_invariant": self.family.batchable, "diffusers": diffusers.__version__}
        return dict(self._identity)

    def resolve(self, request: EditRequest, index: int = 0) -> dict[str, Any]:
        return resolve_knobs(self.declared_knobs, request.knobs, method=self.name, item_id=request.item_id, index=index)

    def metric_input(self, request: EditRequest) -> torch.Tensor:
        return self.preprocess(request.image, self.resolve(request)["resize"])

    def preprocess(self, image, resize, index: int = 0) -> torch.Tensor:
        """The input as this method edits it: ``[3, H, W]`` in [0, 1], sides multiples of ``multiple``."""
        from ip2p.core import as_pil_or_tensor
        from ip2p.util.io import pil_to_tensor

        x = as_pil_or_tensor(image, index)
        t = pil_to_tensor(x) if not isinstance(x, torch.Tensor) else x
        h, w = t.shape[1:]
        if resize == "model":
            f = (self.family.resolution ** 2 / (h * w)) ** 0.5
            h, w = h * f, w * f
        m = self.multiple
        h2, w2 = max(m, int(h // m) * m), max(m, int(w // m) * m)
        if (h2, w2) == tuple(t.shape[1:]):
            return t
        return torch.nn.functional.interpolate(t[None], size=(h2, w2), mode="bicubic", antialias=True,
                                               align_corners=False)[0].clamp(0, 1)

    def check_fields(self, request: EditRequest, index: int) -> None:
        for name in self.family.fields:
            v = getattr(request, name)
            if not isinstance(v, str) or not v.strip():
                raise DataRowError(f"{who(request.item_id, index)}: {name} is empty; {self.name} needs "
                                   f"{' and '.join(self.family.fields)} for every item")

    @torch.no_grad()
    def run(self, requests: Sequence[EditRequest], **_: Any) -> list[torch.Tensor]:
        """One ``[3, H, W]`` edit per request, in order; every request is checked before any work."""
        knobs = [self.resolve(r, i) for i, r in enumerate(requests)]
        for i, r in enumerate(requests):
            self.check_fields(r, i)
        images = [self.preprocess(r.image, k["resize"], i) for i, (r, k) in enumerate(zip(requests, knobs))]
        groups: dict[str, list[int]] = {}
        for i, k in enumerate(knobs):
            groups.setdefault(json.dumps([k, list(images[i].shape)], sort_keys=True, default=str), []).append(i)
        outs: list[torch.Tensor | None] = [None] * len(requests)
        for idx in groups.values():
            for s in range(0, len(idx), self.max_batch):
                part = idx[s : s + self.max_batch]
                edited = FLOWS[self.family.flow](self, [requests[i] for i in part], knobs[part[0]],
                                                 [images[i] for i in part])
                for i, y in zip(part, edited):
                    outs[i] = _finish(y, images[i], requests[i], i)
        return outs  # type: ignore[return-value]

    def call_kwargs(self, knobs: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
        """The knobs (those the call takes) plus the output size and ``output_type``."""
        kw = {k: v for k, v in knobs.items() if k in self.call_params}
        for k, v in (("height", height), ("width", width), ("_auto_resize", False), ("max_area", height * width)):
            if k in self.call_params:
                kw[k] = v
        return {**kw, "output_type": "pt"}


def _finish(y: torch.Tensor, processed: torch.Tensor, request: EditRequest, index: int) -> torch.Tensor:
    from ip2p.errors import NonFiniteOutputError

    y = y.detach().float().cpu()
    if y.ndim == 4:  # a video pipeline: its last frame
        y = y[-1] if y.shape[0] != 3 else y[:, -1]
    if tuple(y.shape[1:]) != tuple(processed.shape[1:]):
        y = torch.nn.functional.interpolate(y[None], size=tuple(processed.shape[1:]), mode="bilinear",
                                            antialias=True, align_corners=False)[0]
    if not torch.isfinite(y).all():
        raise NonFiniteOutputError(f"{who(request.item_id, index)}: the pipeline produced NaN/Inf (seed {request.seed})")
    return y.clamp(0, 1)


def _pil(x: torch.Tensor):
    from ip2p.util.io import tensor_to_pil

    return tensor_to_pil(x)


def generators(requests: Sequence[EditRequest]) -> list[torch.Generator]:
    """One CPU generator per request, seeded by its own seed."""
    return [torch.Generator().manual_seed(int(r.seed)) for r in requests]


def _as_images(out) -> torch.Tensor:
    imgs = out.images if hasattr(out, "images") else out.frames if hasattr(out, "frames") else out[0]
    if isinstance(imgs, torch.Tensor):
        return imgs
    import numpy as np

    if isinstance(imgs, np.ndarray):
        return torch.from_numpy(imgs).movedim(-1, -3)
    from ip2p.util.io import pil_to_tensor

    return torch.stack([pil_to_tensor(p) for p in imgs])


def _flow_edit(ed: PipelineEditor, reqs, knobs, images) -> list[torch.Tensor]:
    kw = ed.call_kwargs(knobs, *images[0].shape[1:])
    prompts = [r.instruction for r in reqs]
    pil = [_pil(x) for x in images]
    if isinstance(kw.get("negative_prompt"), str) and len(reqs) > 1:
        kw["negative_prompt"] = [kw["negative_prompt"]] * len(reqs)
    out = ed.pipe(prompt=prompts if len(reqs) > 1 else prompts[0], image=pil if len(reqs) > 1 else pil[0],
                  generator=generators(reqs), **kw)
    return list(_as_images(out))


def _flow_ledits(ed: PipelineEditor, reqs, knobs, images) -> list[torch.Tensor]:
    (r,), (x,) = reqs, images
    (g,) = generators(reqs)
    h, w = x.shape[1:]
    ed.pipe.invert(image=_pil(x), source_prompt=r.input_caption or "", source_guidance_scale=knobs["source_guidance_scale"],
                   num_inversion_steps=knobs["num_inversion_steps"], skip=knobs["skip"], generator=g, height=h, width=w)
    out = ed.pipe(editing_prompt=[r.instruction], edit_guidance_scale=knobs["edit_guidance_scale"],
                  edit_threshold=knobs["edit_threshold"], edit_warmup_steps=knobs["edit_warmup_steps"],
                  generator=g, output_type="pt")
    return list(_as_images(out))


def _flow_diffedit(ed: PipelineEditor, reqs, knobs, images) -> list[torch.Tensor]:
    (r,), (x,) = reqs, images
    (g,) = generators(reqs)
    pil, p = _pil(x), ed.pipe
    mask = p.generate_mask(image=pil, source_prompt=r.input_caption, target_prompt=r.output_caption,
                           mask_encode_strength=knobs["mask_encode_strength"],
                           num_maps_per_mask=knobs["num_maps_per_mask"], generator=g)
    inv = p.invert(prompt=r.input_caption, image=pil, num_inference_steps=knobs["num_inference_steps"],
                   inpaint_strength=knobs["inpaint_strength"], generator=g).latents
    out = p(prompt=r.output_caption, mask_image=mask, image_latents=inv, inpaint_strength=knobs["inpaint_strength"],
            num_inference_steps=knobs["num_inference_steps"], guidance_scale=knobs["guidance_scale"],
            negative_prompt=r.input_caption, generator=g, output_type="pt")
    return list(_as_images(out))


FLOWS: dict[str, Callable[..., list[torch.Tensor]]] = {"edit": _flow_edit, "ledits": _flow_ledits,
                                                      "diffedit": _flow_diffedit}


def denoiser(pipe):
    """The pipeline's denoiser: its transformer, else its UNet."""
    return getattr(pipe, "transformer", None) or pipe.unet


def pipeline_weights_hash(pipe) -> str:
    """A hash over the state dicts of every ``torch.nn.Module`` component of ``pipe``."""
    from ip2p.util.hashing import hash_state_dict

    parts = {n: hash_state_dict(m) for n, m in sorted(pipe.components.items()) if isinstance(m, torch.nn.Module)}
    return hash_state_dict({k: torch.tensor(list(v.encode())) for k, v in parts.items()})


# ---------------------------------------------------------------- loading and registration


def load_family_pipeline(source: str, family: Family, *, dtype: str = "fp32", pipeline: str | None = None,
                         local_files_only: bool | None = None):
    """``source`` through the loading layer as ``family``'s pipeline (refused naming its classes)."""
    if dtype not in DTYPES:
        raise SpecError(f"dtype {dtype!r}: must be one of {sorted(DTYPES)}")
    if pipeline is not None and pipeline not in family.classes:
        raise SpecError(f"pipeline {pipeline!r}: {family.name} runs {', '.join(family.classes)}")
    found = pipeline_class_name(source, local_files_only=local_files_only)
    pipe = load_pipeline(source, expected=family.classes + family.accepts, pipeline=pipeline,
                         load_as=found if found in family.classes else family.classes[0],
                         torch_dtype=DTYPES[dtype], local_files_only=local_files_only)
    if family.flow == "diffedit" and getattr(pipe, "inverse_scheduler", None) is None:
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    return pipe


def load_pipeline_editor(model: str, family: Family | None = None, *, device=None, pipeline: str | None = None,
                         dtype: str = "fp32", max_batch: int = 8, cpu_offload: bool = False,
                         attention_backend: str | None = None, local_files_only: bool | None = None) -> PipelineEditor:
    """An editor on ``model`` (folder or hub id): ``family``, or the one of ``pipeline`` / its model_index.json."""
    if model is None:
        raise SpecError("the diffusers method needs a model (a pipeline folder or hub id)")
    if family is None:
        family = family_of(pipeline or pipeline_class_name(model, local_files_only=local_files_only))
    pipe = load_family_pipeline(model, family, dtype=dtype, pipeline=pipeline, local_files_only=local_files_only)
    return PipelineEditor(pipe, family, source=str(model), device=device, dtype=dtype, max_batch=max_batch,
                          cpu_offload=cpu_offload, attention_backend=attention_backend)


def _union_knobs() -> dict[str, Knob]:
    """Every family's knobs for the ``diffusers`` method (the loaded family then checks its own)."""
    out: dict[str, Knob] = {}
    for fam in FAMILIES.values():
        for k, v in fam.declared_knobs.items():
            if k in out and out[k] != v:
                lo = [x.minimum for x in (out[k], v)]
                out[k] = Knob(v.kind, default=None, nullable=True, minimum=None if None in lo else min(lo),
                              choices=v.choices, doc=f"{v.doc} (default: the family's)")
            else:
                out.setdefault(k, v)
    return out


def _description(fam: Family) -> str:
    one = "" if fam.batchable else "; requests run one per call (not batch-invariant otherwise)"
    return (f"{'/'.join(fam.classes)} through diffusers' own pipeline ({fam.recommended}; needs "
            f"{' and '.join(fam.fields)}){one}" + (f"; {fam.note}" if fam.note else ""))


def _register() -> None:
    for fam in FAMILIES.values():
        register_method(fam.name, (lambda f: lambda model=None, device=None, **o: load_pipeline_editor(
            model or f.hub_id, f, device=device, **o))(fam), knobs=fam.declared_knobs, default_model=fam.hub_id,
            description=_description(fam), replace=True)
    register_method("diffusers", lambda model=None, device=None, **o: load_pipeline_editor(model, device=device, **o),
                    knobs=_union_knobs(), description="any editing pipeline of diffusers, its family chosen by the "
                    "model_index.json class (or options.pipeline): " + ", ".join(FAMILIES), replace=True)


_register()

__all__ = ["Family", "FAMILIES", "PipelineEditor", "family_of", "load_pipeline_editor", "load_family_pipeline",
           "generators", "denoiser", "pipeline_weights_hash", "DTYPES"]
