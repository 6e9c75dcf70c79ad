"""Loading editor components: diffusers folders and hub ids, original single-file checkpoints,
and built-in architectures by name (`sd15`, `tiny`) with random weights; `world:<name>` names
resolve to the shipped small-world folders through the same code paths as real models.

Every loader returns ``Components`` and every ``Components`` is validated the same way: the
UNet must take 8 input channels (4 noisy latent + 4 image latent) and the text encoder's width
must equal the UNet's cross-attention width.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ip2p.errors import ModelLoadError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# name -> JSON file describing a built-in architecture (users may register more).
BUILTIN_ARCHITECTURES: dict[str, Path] = {
    "sd15": CONFIG_DIR / "sd15.json",
    "tiny": CONFIG_DIR / "tiny.json",
}


def register_architecture(name: str, config_path: str | os.PathLike) -> None:
    """Make ``load_components(name)`` build the architecture described by a JSON file."""
    BUILTIN_ARCHITECTURES[name] = Path(config_path)


def resolve_source(source: str | Path) -> str:
    """Map a model name to what diffusers / open_clip loaders take.

    ``world:<name>`` -> the shipped folder; an existing path -> that path (as str);
    anything else is returned unchanged (a hub id, or a built-in architecture name).
    """
    s = str(source)
    if s.startswith("world:"):
        from ip2p.world import world_model_path

        return str(world_model_path(s.split(":", 1)[1]))
    return s


def local_files_only_default(local_files_only: bool | None) -> bool:
    """``local_files_only`` as given, or, when None, whether ``HF_HUB_OFFLINE`` is set."""
    if local_files_only is not None:
        return bool(local_files_only)
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


@dataclass
class Components:
    """The parts of an InstructPix2Pix model, as diffusers/transformers objects."""

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


def validate_components(c: Components) -> Components:
    """Refuse combinations that cannot run as InstructPix2Pix, saying which part is wrong."""
    in_ch = int(c.unet.config.in_channels)
    lat = int(c.vae.config.latent_channels)
    if in_ch != 2 * lat:
        hint = (
            " It looks like a text-to-image UNet: fine-tune it into an editor with `ip2p train --base ...`."
            if in_ch == lat
            else ""
        )
        raise ModelLoadError(
            f"{c.source or 'model'}: the UNet takes {in_ch} input channels, but InstructPix2Pix needs "
            f"{2 * lat} ({lat} noisy-latent + {lat} image-latent channels for this VAE).{hint}"
        )
    return check_output_and_text_width(c)


def check_output_and_text_width(c: Components) -> Components:
    """Checks every UNet-VAE-text encoder triple must pass: the UNet predicts the VAE's latent
    channels, and the text encoder's width equals the UNet's cross-attention width."""
    lat = int(c.vae.config.latent_channels)
    if int(c.unet.config.out_channels) != lat:
        raise ModelLoadError(
            f"{c.source or 'model'}: the UNet predicts {c.unet.config.out_channels} channels but the VAE latent has {lat}"
        )
    width = int(c.text_encoder.config.hidden_size)
    xattn = c.unet.config.cross_attention_dim
    xattn = int(xattn[0] if isinstance(xattn, (list, tuple)) else xattn)
    if width != xattn:
        raise ModelLoadError(
            f"{c.source or 'model'}: the text encoder's width (hidden_size={width}) does not match the UNet's "
            f"cross-attention width (cross_attention_dim={xattn}); they must come from the same model"
        )
    return c


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
    dtype, sampler, any ``extra`` fields, resize mode and resolution."""
    combined, parts = weights_identity(c)
    return {"method": method, "source": c.source, "weights_hash": combined, "component_hashes": parts,
            "dtype": str(dtype).replace("torch.", ""), "sampler": sampler, **extra, "resize": resize,
            "resolution": resolution}


# ---------------------------------------------------------------- the OpenAI CLIP tokenizer

def _bytes_to_unicode() -> dict[int, str]:
    from ip2p.util.bpe import bytes_to_unicode

    return bytes_to_unicode()


@lru_cache(maxsize=1)
def openai_clip_tokenizer_dir() -> Path:
    """A CLIPTokenizer folder (vocab.json, merges.txt) built from the BPE merges file that
    open_clip ships, so the SD tokenizer is available with no download. Cached on disk."""
    import open_clip

    from ip2p.util.io import atomic_write_json, atomic_write_text

    bpe = Path(open_clip.__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.exists():
        raise ModelLoadError(f"open_clip's BPE file is missing: {bpe}; reinstall open_clip_torch")
    cache = Path(os.environ.get("IP2P_CACHE", Path.home() / ".cache" / "ip2p")) / "tokenizers" / "openai-clip"
    if (cache / "tokenizer_config.json").exists():
        return cache
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    atomic_write_json(cache / "vocab.json", {tok: i for i, tok in enumerate(vocab)})
    atomic_write_text(cache / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    atomic_write_json(
        cache / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "do_lower_case": True,
        },
    )
    return cache


# ---------------------------------------------------------------- built-in architectures

def build_builtin(name: str, *, seed: int = 0, torch_dtype=None) -> Components:
    """Random-weight model of a named built-in architecture (deterministic from ``seed``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.schedulers import EulerAncestralDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = BUILTIN_ARCHITECTURES.get(name)
    if path is None:
        raise ModelLoadError(f"unknown built-in architecture {name!r}; known: {sorted(BUILTIN_ARCHITECTURES)}")
    cfg = json.loads(Path(path).read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    if cfg.get("tokenizer", "openai-clip") != "openai-clip":
        raise ModelLoadError(f"{path}: tokenizer {cfg['tokenizer']!r} is not supported (use 'openai-clip')")
    tokenizer = CLIPTokenizer.from_pretrained(str(openai_clip_tokenizer_dir()))
    sched_cfg = {k: v for k, v in cfg["scheduler"].items() if not k.startswith("_")}
    scheduler = EulerAncestralDiscreteScheduler(**sched_cfg)
    c = Components(unet, vae, text_encoder.eval(), tokenizer, scheduler, source=name, resolution=cfg.get("resolution"))
    c.info = {"kind": "builtin", "architecture": name, "seed": seed}
    if torch_dtype is not None:
        for m in (c.unet, c.vae, c.text_encoder):
            m.to(torch_dtype)
    return validate_components(c)


# ---------------------------------------------------------------- diffusers folders / hub ids

def _missing_weights_error(source: str, local_files_only: bool, err: Exception) -> ModelLoadError:
    where = "the local Hugging Face cache" if local_files_only else "the Hub or the local cache"
    return ModelLoadError(
        f"cannot load model {source!r}: it is not a local folder and was not found in {where} ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}). Supply the weights: on a machine with network run "
        f"`hf download {source} --local-dir <folder>` and pass that folder, or copy them into $HF_HOME/hub "
        f"(then use local_files_only=True / HF_HUB_OFFLINE=1)."
    )


def load_diffusers(source: str, *, local_files_only: bool | None = None, torch_dtype=None, revision=None) -> Components:
    """Components from a diffusers folder (model_index.json with unet/vae/text_encoder/tokenizer/
    scheduler subfolders) or a hub id; ``local_files_only`` defaults to ``HF_HUB_OFFLINE``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.schedulers import EulerAncestralDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    local_files_only = local_files_only_default(local_files_only)
    is_dir = Path(source).is_dir()
    kw: dict[str, Any] = {"local_files_only": local_files_only}
    if revision is not None:
        kw["revision"] = revision
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype

    def part(cls, sub, **extra):
        if is_dir and not (Path(source) / sub).is_dir():
            raise ModelLoadError(f"{source}: the diffusers folder has no '{sub}/' subfolder (expected unet, vae, text_encoder, tokenizer, scheduler)")
        try:
            return cls.from_pretrained(source, subfolder=sub, **kw, **extra)
        except ModelLoadError:
            raise
        except (OSError, ValueError) as e:  # huggingface_hub errors derive from these
            if is_dir:
                raise ModelLoadError(f"{source}/{sub}: cannot load {cls.__name__}: {e}") from e
            raise _missing_weights_error(source, local_files_only, e) from e

    unet = part(UNet2DConditionModel, "unet")
    vae = part(AutoencoderKL, "vae")
    text_encoder = part(CLIPTextModel, "text_encoder")
    tok_kw = {k: v for k, v in kw.items() if k != "torch_dtype"}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **tok_kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{source}: cannot load the tokenizer (tokenizer/vocab.json, merges.txt): {e}") from e
    try:
        scheduler = EulerAncestralDiscreteScheduler.from_pretrained(source, subfolder="scheduler", **tok_kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{source}: cannot load the scheduler config (scheduler/scheduler_config.json): {e}") from e
    res = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    c = Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, source=source, resolution=res)
    c.info = {"kind": "diffusers", "local_files_only": local_files_only}
    return validate_components(c)


# ---------------------------------------------------------------- original single-file checkpoints

def load_single_file(
    path: str,
    *,
    config: str | None = None,
    trust_pickle: bool = False,
    local_files_only: bool | None = None,
    torch_dtype=None,
) -> Components:
    """Components from an original (LDM layout) InstructPix2Pix checkpoint, e.g.
    ``instruct-pix2pix-00-22000.safetensors``, through diffusers' ``from_single_file`` (EMA
    weights extracted when present). ``config`` is a diffusers folder or hub id whose configs
    describe the architecture (default: diffusers infers it, which needs the hub cache), or a
    built-in architecture name (``tiny``, ``sd15``: a weight-free config folder is written once
    under ``$IP2P_CACHE/configs/<name>/``). ``.ckpt`` files are pickles and load only with
    ``trust_pickle=True``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"checkpoint file not found: {p}")
    if p.suffix in (".ckpt", ".pt", ".pth", ".bin") and not trust_pickle:
        raise ModelLoadError(
            f"{p} is a pickle ({p.suffix}), which can run code when loaded. Pass trust_pickle=True "
            f"(CLI: --trust-pickle) only if you trust its origin, or convert it to .safetensors."
        )
    local_files_only = local_files_only_default(local_files_only)
    # No safety checker. (diffusers treats any `load_safety_checker` value, False included, as a
    # request to download CompVis/stable-diffusion-safety-checker.)
    kw: dict[str, Any] = {"local_files_only": local_files_only, "safety_checker": None,
                          "feature_extractor": None, "requires_safety_checker": False}
    if config is not None:
        from ip2p.export import builtin_config_dir, check_single_file

        if str(config) in BUILTIN_ARCHITECTURES:
            kw["config"] = str(builtin_config_dir(str(config)))
        else:
            kw["config"] = resolve_source(config)
        check_single_file(p, kw["config"])  # .safetensors: names and shapes, before diffusers builds anything
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    try:
        pipe = StableDiffusionInstructPix2PixPipeline.from_single_file(str(p), **kw)
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
    c = components_from_pipe(pipe, source=str(p))
    c.info = {"kind": "single_file", "config": config}
    return c


def components_from_pipe(pipe, *, source: str = "") -> Components:
    """Components of an existing diffusers InstructPix2Pix pipeline (shared, not copied)."""
    res = int(pipe.unet.config.sample_size) * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    c = Components(
        pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
        source=source or getattr(pipe, "name_or_path", "") or "pipeline", resolution=res,
    )
    c.info = {"kind": "pipeline"}
    return validate_components(c)


# ---------------------------------------------------------------- one entry point

def load_components(
    source: str | os.PathLike,
    *,
    local_files_only: bool | None = None,
    torch_dtype=None,
    trust_pickle: bool = False,
    config: str | None = None,
    seed: int = 0,
) -> Components:
    """Load from a built-in name, ``world:<name>``, a diffusers folder or hub id, or a single file."""
    s = str(source)
    if s in BUILTIN_ARCHITECTURES:
        return build_builtin(s, seed=seed, torch_dtype=torch_dtype)
    resolved = resolve_source(s)
    p = Path(resolved)
    if p.is_file() or p.suffix in (".safetensors", ".ckpt", ".pt", ".pth"):
        return load_single_file(resolved, config=config, trust_pickle=trust_pickle,
                                local_files_only=local_files_only, torch_dtype=torch_dtype)
    if p.is_dir() and not (p / "model_index.json").exists() and not (p / "unet").is_dir():
        raise ModelLoadError(f"{p} is a folder but not a diffusers pipeline folder (no model_index.json or unet/)")
    c = load_diffusers(resolved, local_files_only=local_files_only, torch_dtype=torch_dtype)
    if s != resolved:
        c.source = s
    return c


__all__ = [
    "Components",
    "BUILTIN_ARCHITECTURES",
    "register_architecture",
    "resolve_source",
    "validate_components",
    "check_output_and_text_width",
    "weights_identity",
    "place_for_inference",
    "local_files_only_default",
    "build_builtin",
    "load_diffusers",
    "load_single_file",
    "components_from_pipe",
    "load_components",
    "openai_clip_tokenizer_dir",
    "ModelLoadError",
]
