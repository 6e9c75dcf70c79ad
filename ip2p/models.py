"""The one loading layer: a model source becomes ``Components``, checked for what the caller expects.

Sources: a built-in architecture with random weights (``sd15``, ``tiny``; ``sd15-t2i``, ``tiny-t2i``
for their text-to-image versions), a shipped small-world name (``world:ip2p``, ``world:sd``), a
diffusers pipeline folder or hub id, or an original single-file checkpoint (``.safetensors``;
``.ckpt`` only with ``trust_pickle``). Every caller (the InstructPix2Pix editor, SDEdit, the trainer's
base, the world recipes, the pair generator, the profiler) says which kind of pipeline it expects:

- ``"ip2p"``: an InstructPix2Pix UNet (``in_channels == 2 * latent channels``);
- ``"t2i"``: a text-to-image UNet (``in_channels == latent channels``);
- ``"any"``: either (the trainer's base).

A wrong kind is refused with the reason, before any weights load where the configs tell. Every
``Components`` also passes the checks any UNet-VAE-text-encoder triple must pass, and its
scheduler's ``prediction_type`` (epsilon, v_prediction, sample) must be one the samplers know.
CLIP models load through ``ip2p.metrics.load_clip``, not here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ip2p.builtin import (
    BUILTIN_ARCHITECTURES,
    CONFIG_DIR,
    T2I_SUFFIX,
    build_modules,
    builtin_config_dir,
    builtin_name,
    openai_clip_tokenizer_dir,
    register_architecture,
)
from ip2p.errors import ModelLoadError

KINDS = ("ip2p", "t2i", "any")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def resolve_source(source: str | Path) -> str:
    """Map a model name to what diffusers / open_clip loaders take.

    ``<prefix>:<name>`` (``world:ip2p``) -> the folder the prefix's registered resolver names
    (``ip2p.sources``); an existing path -> that path (as str);
    anything else is returned unchanged (a hub id, or a built-in architecture name).
    """
    from ip2p.sources import resolve_prefixed

    s = str(source)
    resolved = resolve_prefixed(s)
    return s if resolved is None else resolved


def local_files_only_default(local_files_only: bool | None) -> bool:
    """``local_files_only`` as given, or, when None, whether ``HF_HUB_OFFLINE`` is set."""
    if local_files_only is not None:
        return bool(local_files_only)
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


@dataclass
class Components:
    """The parts of a latent-diffusion model, as diffusers/transformers objects."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    source: str = ""
    resolution: int | None = None  # the model's native image size (paper resize target)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def kind(self) -> str:
        """``"ip2p"`` or ``"t2i"`` from the UNet's input channels (``"unknown"`` otherwise)."""
        in_ch, lat = int(self.unet.config.in_channels), self.latent_channels
        return "ip2p" if in_ch == 2 * lat else "t2i" if in_ch == lat else "unknown"

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts, from its scheduler config: epsilon, v_prediction or sample."""
        return str(getattr(self.scheduler.config, "prediction_type", None) or "epsilon")


# ---------------------------------------------------------------- checks

def _kind_error(source: str, in_ch: int, lat: int, kind: str) -> ModelLoadError:
    if kind == "ip2p":
        hint = (" It looks like a text-to-image UNet: fine-tune it into an editor with `ip2p train --base ...`."
                if in_ch == lat else "")
        return ModelLoadError(
            f"{source or 'model'}: the UNet takes {in_ch} input channels, but InstructPix2Pix needs "
            f"{2 * lat} ({lat} noisy-latent + {lat} image-latent channels for this VAE).{hint}")
    if kind == "t2i":
        hint = (" It is an InstructPix2Pix (image-conditioned) UNet; pass the text-to-image model it was "
                "fine-tuned from, e.g. world:sd or stable-diffusion-v1-5/stable-diffusion-v1-5."
                if in_ch == 2 * lat else "")
        return ModelLoadError(
            f"{source or 'model'}: the UNet takes {in_ch} input channels, but a text-to-image model needs "
            f"{lat} (the VAE's latent channels).{hint}")
    return ModelLoadError(f"{source or 'model'}: the UNet takes {in_ch} input channels; expected {lat} "
                          f"(text-to-image) or {2 * lat} (InstructPix2Pix) for this VAE")


def check_kind(source: str, in_channels: int, latent_channels: int, kind: str) -> None:
    """Refuse a UNet whose input channels do not fit the expected pipeline ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    ok = {"ip2p": in_channels == 2 * latent_channels, "t2i": in_channels == latent_channels,
          "any": in_channels in (latent_channels, 2 * latent_channels)}[kind]
    if not ok:
        raise _kind_error(source, in_channels, latent_channels, kind)


def check_prediction_type(source: str, prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(f"{source or 'model'}: scheduler/scheduler_config.json has prediction_type "
                             f"{prediction_type!r}, which no sampler here knows; expected one of {list(PREDICTION_TYPES)}")


def validate_components(c: Components, kind: str = "ip2p") -> Components:
    """Refuse components that cannot run as ``kind``, saying which part is wrong: the UNet's input
    channels, its output channels, the text encoder's width against the UNet's cross-attention
    width, guidance-distilled UNets, and an unknown ``prediction_type``."""
    check_kind(c.source, int(c.unet.config.in_channels), c.latent_channels, kind)
    lat = c.latent_channels
    if int(c.unet.config.out_channels) != lat:
        raise ModelLoadError(
            f"{c.source or 'model'}: the UNet predicts {c.unet.config.out_channels} channels but the VAE latent has {lat}")
    width = int(c.text_encoder.config.hidden_size)
    xattn = c.unet.config.cross_attention_dim
    xattn = int(xattn[0] if isinstance(xattn, (list, tuple)) else xattn)
    if width != xattn:
        raise ModelLoadError(
            f"{c.source or 'model'}: the text encoder's width (hidden_size={width}) does not match the UNet's "
            f"cross-attention width (cross_attention_dim={xattn}); they must come from the same model")
    if getattr(c.unet.config, "time_cond_proj_dim", None) is not None:
        raise ModelLoadError(f"{c.source or 'model'}: guidance-distilled UNets (time_cond_proj_dim) are not supported")
    check_prediction_type(c.source, c.prediction_type)
    return c


# ---------------------------------------------------------------- placement and identity

def place_for_inference(c: Components, device: torch.device, dtype: torch.dtype, *, compile: bool = False):
    """Move UNet, VAE and text encoder to ``device``/``dtype`` (only when needed), freeze them in
    eval mode; returns the UNet to call (compiled when asked)."""
    for m in (c.unet, c.vae, c.text_encoder):
        if m.device != device or m.dtype != dtype:
            m.to(device, dtype=dtype)
        m.eval().requires_grad_(False)
    return torch.compile(c.unet) if compile else c.unet


def weights_identity(c: Components) -> tuple[str, dict[str, str]]:
    """(combined hash, per-component hashes) of the UNet, VAE and text encoder weights."""
    from ip2p.util.hashing import hash_state_dict

    parts = {name: hash_state_dict(getattr(c, name)) for name in ("unet", "vae", "text_encoder")}
    combined = hash_state_dict({k: torch.tensor(list(v.encode())) for k, v in parts.items()})
    return combined, parts


def editor_identity(method: str, c: Components, dtype: torch.dtype, *, sampler: str, resize, resolution: int,
                    **extra) -> dict:
    """What an editor's outputs depend on besides the request: method, source, weights hashes,
    dtype, sampler, prediction type, any ``extra`` fields, resize mode and resolution."""
    combined, parts = weights_identity(c)
    return {"method": method, "source": c.source, "weights_hash": combined, "component_hashes": parts,
            "dtype": str(dtype).replace("torch.", ""), "sampler": sampler, "prediction_type": c.prediction_type,
            **extra, "resize": resize, "resolution": resolution}


# ---------------------------------------------------------------- built-in architectures

def build_builtin(name: str, *, seed: int = 0, torch_dtype=None, kind: str = "ip2p") -> Components:
    """Random-weight model of a named built-in architecture (deterministic from ``seed``);
    ``kind="t2i"`` (or a ``<name>-t2i`` name) gives its text-to-image version."""
    parsed = builtin_name(name)
    arch, kind = parsed if parsed and parsed[1] == "t2i" else (name, kind)
    unet, vae, text_encoder, tokenizer, scheduler, res = build_modules(arch, kind, seed=seed)
    if kind == "ip2p":  # the paper's sampler (only its training sigmas are used by default)
        from diffusers import EulerAncestralDiscreteScheduler

        scheduler = EulerAncestralDiscreteScheduler.from_config(scheduler.config)
    source = arch + (T2I_SUFFIX if kind == "t2i" else "")
    c = Components(unet, vae, text_encoder, tokenizer, scheduler, source=source, resolution=res)
    c.info = {"kind": "builtin", "architecture": arch, "seed": seed, "unet_in_channels": int(unet.config.in_channels)}
    if torch_dtype is not None:
        for m in (c.unet, c.vae, c.text_encoder):
            m.to(torch_dtype)
    return validate_components(c, kind)


def build_t2i_builtin(arch: str = "tiny", *, seed: int = 0, torch_dtype=None) -> Components:
    """Random-weight text-to-image model of a built-in architecture (``<arch>-t2i``)."""
    return build_builtin(arch, seed=seed, torch_dtype=torch_dtype, kind="t2i")


# ---------------------------------------------------------------- diffusers folders / hub ids

def _missing_weights_error(source: str, what: str, local_files_only: bool, err: Exception) -> ModelLoadError:
    where = "the local Hugging Face cache" if local_files_only else "the Hub or the local cache"
    first = str(err).splitlines()[0] if str(err) else ""
    return ModelLoadError(
        f"cannot load model {source!r} ({what}): it is not a local folder and was not found in {where} "
        f"({type(err).__name__}: {first}). Supply the weights: on a machine with network run "
        f"`hf download {source} --local-dir <folder>` and pass that folder, or copy them into $HF_HOME/hub "
        f"(then use local_files_only=True / HF_HUB_OFFLINE=1)."
    )


def load_diffusers(source: str, *, kind: str = "ip2p", local_files_only: bool | None = None, torch_dtype=None,
                   revision=None) -> Components:
    """Components from a diffusers folder (unet/vae/text_encoder/tokenizer/scheduler subfolders) or a
    hub id; ``local_files_only`` defaults to ``HF_HUB_OFFLINE``. The UNet's channels are checked
    against ``kind`` from the configs, before any weights load."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local_files_only = local_files_only_default(local_files_only)
    is_dir = Path(source).is_dir()
    kw: dict[str, Any] = {"local_files_only": local_files_only}
    if revision is not None:
        kw["revision"] = revision
    wkw = {**kw, **({"torch_dtype": torch_dtype} if torch_dtype is not None else {})}

    def attempt(what, fn):
        try:
            return fn()
        except ModelLoadError:
            raise
        except (OSError, ValueError) as e:  # huggingface_hub errors derive from these
            if is_dir:
                raise ModelLoadError(f"{source}/{what}: cannot load: {type(e).__name__}: "
                                     f"{str(e).splitlines()[0] if str(e) else ''}") from e
            raise _missing_weights_error(source, what, local_files_only, e) from e

    if is_dir:
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (Path(source) / sub).is_dir():
                raise ModelLoadError(f"{source}: the diffusers folder has no '{sub}/' subfolder "
                                     f"(expected unet, vae, text_encoder, tokenizer, scheduler)")
    unet_cfg = attempt("unet", lambda: UNet2DConditionModel.load_config(source, subfolder="unet", **kw))
    vae_cfg = attempt("vae", lambda: AutoencoderKL.load_config(source, subfolder="vae", **kw))
    check_kind(source, int(unet_cfg["in_channels"]), int(vae_cfg.get("latent_channels", 4)), kind)
    # any scheduler class reads scheduler_config.json; its _class_name picks the class
    sched_cfg = attempt("scheduler", lambda: diffusers.DDIMScheduler.load_config(source, subfolder="scheduler", **kw))
    check_prediction_type(source, str(sched_cfg.get("prediction_type") or "epsilon"))
    unet = attempt("unet", lambda: UNet2DConditionModel.from_pretrained(source, subfolder="unet", **wkw))
    vae = attempt("vae", lambda: AutoencoderKL.from_pretrained(source, subfolder="vae", **wkw))
    text_encoder = attempt("text_encoder", lambda: CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **wkw))
    tokenizer = attempt("tokenizer", lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw))
    if int(unet_cfg["in_channels"]) == 2 * int(vae_cfg.get("latent_channels", 4)):
        sched_cls = diffusers.EulerAncestralDiscreteScheduler  # the paper's sampler over the model's sigmas
    else:
        sched_cls = getattr(diffusers, str(sched_cfg.get("_class_name", "")), None)
        if sched_cls is None:
            raise ModelLoadError(f"{source}/scheduler: unknown scheduler class {sched_cfg.get('_class_name')!r}")
    scheduler = sched_cls.from_config(sched_cfg)
    res = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    c = Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, source=source, resolution=res)
    c.info = {"kind": "diffusers", "local_files_only": local_files_only, "scheduler_config": dict(sched_cfg)}
    return validate_components(c, kind)


# ---------------------------------------------------------------- original single-file checkpoints

def load_single_file(
    path: str,
    *,
    kind: str = "ip2p",
    config: str | None = None,
    trust_pickle: bool = False,
    local_files_only: bool | None = None,
    torch_dtype=None,
) -> Components:
    """Components from an original (LDM layout) checkpoint, e.g.
    ``instruct-pix2pix-00-22000.safetensors``, through diffusers' ``from_single_file`` (EMA
    weights extracted when present). ``config`` is a diffusers folder or hub id whose configs
    describe the architecture (default: diffusers infers it, which needs the hub cache), or a
    built-in architecture name (``tiny``, ``sd15``: a weight-free config folder is written once
    under ``$IP2P_CACHE/configs/<name>/``). ``.ckpt`` files are pickles and load only with
    ``trust_pickle=True``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

    p = Path(path)
    _check_checkpoint_file(p, trust_pickle)
    kw = _single_file_options(p, kind, config, local_files_only_default(local_files_only), torch_dtype)
    pipe_cls = StableDiffusionPipeline if kind == "t2i" else StableDiffusionInstructPix2PixPipeline
    pipe = _pipe_from_single_file(pipe_cls, p, kw, config)
    c = components_from_pipe(pipe, source=str(p), kind=kind)
    c.info = {"kind": "single_file", "config": config}
    return c


def _check_checkpoint_file(p: Path, trust_pickle: bool) -> None:
    """The checkpoint exists, and is not a pickle unless trusted."""
    if not p.is_file():
        raise ModelLoadError(f"checkpoint file not found: {p}")
    if p.suffix in _PICKLE_SUFFIXES and not trust_pickle:
        raise ModelLoadError(
            f"{p} is a pickle ({p.suffix}), which can run code when loaded. Pass trust_pickle=True "
            f"(CLI: --trust-pickle) only if you trust its origin, or convert it to .safetensors."
        )


def _single_file_options(p: Path, kind: str, config: str | None, local_files_only: bool, torch_dtype) -> dict[str, Any]:
    """``from_single_file``'s keywords: no safety checker, the architecture's config folder (an
    InstructPix2Pix .safetensors checked against it by names and shapes first), the dtype."""
    from ip2p.ldm_layout import check_single_file

    # No safety checker. (diffusers treats any `load_safety_checker` value, False included, as a
    # request to download CompVis/stable-diffusion-safety-checker.)
    kw: dict[str, Any] = {"local_files_only": local_files_only, "safety_checker": None,
                          "feature_extractor": None, "requires_safety_checker": False}
    if config is not None:
        kw["config"] = str(builtin_config_dir(str(config))) if str(config) in BUILTIN_ARCHITECTURES else resolve_source(config)
        if kind == "ip2p":  # .safetensors: names and shapes, before diffusers builds anything
            check_single_file(p, kw["config"])
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    return kw


def _pipe_from_single_file(pipe_cls, p: Path, kw: dict[str, Any], config: str | None):
    """``pipe_cls.from_single_file``, its failures and any weights it left empty (meta tensors: the
    file and the config do not match) as one ``ModelLoadError`` naming the file."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    try:
        pipe = pipe_cls.from_single_file(str(p), **kw)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError, SafetensorError) as e:
        if "meta tensor" in str(e):  # diffusers left modules empty: the file lacks their weights
            raise ModelLoadError(
                f"cannot load single-file checkpoint {p}: it holds no weights for some parameters of the "
                f"architecture that config={config!r} describes; the checkpoint and the config do not match"
            ) from e
        raise ModelLoadError(
            f"cannot load single-file checkpoint {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            + ("" if config else " (pass config=<diffusers folder or hub id> to give the architecture offline)")
        ) from e
    for name in ("unet", "vae", "text_encoder"):
        missing = [k for k, t in getattr(pipe, name).state_dict().items() if t.is_meta]
        if missing:
            raise ModelLoadError(
                f"cannot load single-file checkpoint {p}: it holds no weights for {len(missing)} {name} "
                f"parameter(s), e.g. {missing[:3]}; it does not match the architecture of config={config!r}"
            )
    return pipe


def components_from_pipe(pipe, *, source: str = "", kind: str = "ip2p") -> Components:
    """Components of an existing diffusers pipeline, or of anything with ``unet, vae,
    text_encoder, tokenizer, scheduler`` attributes (shared, not copied), checked as ``kind``."""
    if isinstance(pipe, Components):
        return validate_components(pipe, kind)
    missing = [a for a in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, a, None) is None]
    if missing:
        raise ModelLoadError(f"{type(pipe).__name__} has no {missing[0]!r}; a model needs unet, vae, text_encoder, "
                             f"tokenizer and scheduler")
    res = int(pipe.unet.config.sample_size) * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    c = Components(
        pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
        source=source or getattr(pipe, "name_or_path", "") or type(pipe).__name__, resolution=res,
    )
    c.info = {"kind": "pipeline"}
    return validate_components(c, kind)


# ---------------------------------------------------------------- one entry point

def load_components(
    source: str | os.PathLike,
    *,
    kind: str = "ip2p",
    local_files_only: bool | None = None,
    torch_dtype=None,
    trust_pickle: bool = False,
    config: str | None = None,
    seed: int = 0,
) -> Components:
    """Load ``kind`` ("ip2p", "t2i" or "any") from a built-in name, ``world:<name>``, a diffusers
    folder or hub id, or a single file."""
    s = str(source)
    parsed = builtin_name(s)
    if parsed is not None:
        arch, built_kind = parsed
        if kind not in ("any", built_kind):
            other = arch + T2I_SUFFIX if kind == "t2i" else arch
            raise ModelLoadError(f"{s!r} is the built-in {'text-to-image' if built_kind == 't2i' else 'InstructPix2Pix'} "
                                 f"architecture; the {'text-to-image' if kind == 't2i' else 'InstructPix2Pix'} "
                                 f"version is {other!r}")
        return build_builtin(arch, seed=seed, torch_dtype=torch_dtype, kind=built_kind)
    resolved = resolve_source(s)
    p = Path(resolved)
    if p.is_file() or p.suffix in (".safetensors",) + _PICKLE_SUFFIXES:
        c = load_single_file(resolved, kind="ip2p" if kind == "any" else kind, config=config,
                             trust_pickle=trust_pickle, local_files_only=local_files_only, torch_dtype=torch_dtype)
    else:
        if p.is_dir() and not (p / "model_index.json").exists() and not (p / "unet").is_dir():
            if s != resolved:
                raise ModelLoadError(f"model {s!r} is not fully built: {p} has no unet/ subfolder. "
                                     f"Build it with its recipe (for world:*, see ip2p/world/README.md).")
            raise ModelLoadError(f"{p} is a folder but not a diffusers pipeline folder (no model_index.json or unet/)")
        c = load_diffusers(resolved, kind=kind, local_files_only=local_files_only, torch_dtype=torch_dtype)
    if s != resolved:
        c.source = s
    return c


def load_vae(folder: str | os.PathLike):
    """An ``AutoencoderKL`` from a VAE folder (``config.json`` + weights), eval mode."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(str(folder)).eval()
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder}: cannot load a VAE (config.json and weights): {e}") from e


def load_tokenizer(folder: str | os.PathLike):
    """A ``CLIPTokenizer`` from a tokenizer folder (vocab.json, merges.txt)."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder}: cannot load a CLIP tokenizer (vocab.json, merges.txt): {e}") from e


def training_scheduler(c: Components):
    """The DDPM noise scheduler of a model's scheduler config (what training adds noise with)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(c.info.get("scheduler_config") or c.scheduler.config)


# ---------------------------------------------------------------- whole diffusers pipelines (other editors)

def pipeline_class_name(source: str, *, local_files_only: bool | None = None) -> str:
    """The ``_class_name`` of a diffusers folder's or hub id's ``model_index.json``."""
    import json

    resolved = resolve_source(source)
    p = Path(resolved)
    if p.is_dir():
        index = p / "model_index.json"
        if not index.is_file():
            raise ModelLoadError(f"{source}: the folder has no model_index.json, so it is not a diffusers pipeline folder")
    else:
        from huggingface_hub import hf_hub_download

        lfo = local_files_only_default(local_files_only)
        try:
            index = Path(hf_hub_download(resolved, "model_index.json", local_files_only=lfo))
        except (OSError, ValueError) as e:
            raise _missing_weights_error(resolved, "model_index.json", lfo, e) from e
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{source}: cannot read model_index.json ({type(e).__name__}: {e})") from e
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"{source}: model_index.json has no _class_name")
    return name


def load_pipeline(source: str | os.PathLike, *, expected: tuple[str, ...] = (), pipeline: str | None = None,
                  load_as: str | None = None, torch_dtype=None, local_files_only: bool | None = None,
                  **components: Any):
    """A whole diffusers pipeline from a folder or hub id. Its class: ``pipeline`` (the user's explicit
    choice, which must be in ``expected``), else ``load_as`` (the caller's class for folders it
    accepts), else the ``_class_name`` of its ``model_index.json``. Without ``pipeline``, a folder
    whose class is not in ``expected`` is refused before any weights load, naming the classes
    expected (a family that loads, say, a ``StableDiffusionPipeline`` folder as
    ``LEditsPPPipelineStableDiffusion`` lists both).
    ``components`` are passed to ``from_pretrained`` (e.g. a scheduler to add)."""
    import diffusers

    s = str(source)
    found = pipeline_class_name(s, local_files_only=local_files_only)
    name = pipeline or load_as or found
    if expected and (pipeline not in expected if pipeline else found not in expected):
        raise ModelLoadError(f"{s}: model_index.json names {found!r}"
                             + (f" (and pipeline {pipeline!r} was asked for)" if pipeline else "")
                             + f"; this method loads {', '.join(expected)}")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelLoadError(f"{s}: the installed diffusers {diffusers.__version__} has no pipeline class {name!r}")
    kw: dict[str, Any] = {"local_files_only": local_files_only_default(local_files_only), **components}
    if torch_dtype is not None:
        kw["dtype"] = torch_dtype
    resolved = resolve_source(s)
    try:
        pipe = cls.from_pretrained(resolved, **kw)
    except (OSError, ValueError, TypeError) as e:
        if Path(resolved).is_dir():
            raise ModelLoadError(f"{s}: cannot load as {name}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}") from e
        raise _missing_weights_error(resolved, name, kw["local_files_only"], e) from e
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "Components",
    "KINDS",
    "PREDICTION_TYPES",
    "BUILTIN_ARCHITECTURES",
    "CONFIG_DIR",
    "T2I_SUFFIX",
    "register_architecture",
    "resolve_source",
    "validate_components",
    "check_kind",
    "weights_identity",
    "editor_identity",
    "place_for_inference",
    "local_files_only_default",
    "build_builtin",
    "build_t2i_builtin",
    "load_diffusers",
    "load_single_file",
    "components_from_pipe",
    "load_components",
    "load_vae",
    "load_tokenizer",
    "training_scheduler",
    "pipeline_class_name",
    "load_pipeline",
    "openai_clip_tokenizer_dir",
    "ModelLoadError",
]
