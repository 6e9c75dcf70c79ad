"""Built-in architectures by name (``sd15``, ``tiny``: InstructPix2Pix; ``sd15-t2i``, ``tiny-t2i``:
their text-to-image versions), described as JSON configs (``ip2p/configs/<name>.json``, open_clip
style) rather than code, with random weights deterministic from a seed; the OpenAI CLIP tokenizer
built from the BPE file open_clip ships; and the weight-free diffusers config folders that
``from_single_file`` needs to read an original checkpoint offline. ``ip2p.models`` is the loading
entry point; this module only builds."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import torch

from ip2p.errors import ModelLoadError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# name -> JSON file describing a built-in architecture (users may register more).
BUILTIN_ARCHITECTURES: dict[str, Path] = {
    "sd15": CONFIG_DIR / "sd15.json",
    "tiny": CONFIG_DIR / "tiny.json",
}
T2I_SUFFIX = "-t2i"  # "<arch>-t2i": the architecture with a text-to-image (latent-channels) UNet


def register_architecture(name: str, config_path: str | os.PathLike) -> None:
    """Make ``load_components(name)`` build the architecture described by a JSON file."""
    BUILTIN_ARCHITECTURES[name] = Path(config_path)


def builtin_name(source: str) -> tuple[str, str] | None:
    """``(architecture, kind)`` for a built-in name (``"tiny"`` -> ("tiny", "ip2p"),
    ``"tiny-t2i"`` -> ("tiny", "t2i")), None for anything else."""
    if source in BUILTIN_ARCHITECTURES:
        return source, "ip2p"
    if source.endswith(T2I_SUFFIX) and source[: -len(T2I_SUFFIX)] in BUILTIN_ARCHITECTURES:
        return source[: -len(T2I_SUFFIX)], "t2i"
    return None


def architecture_config(name: str) -> dict:
    """The JSON architecture of a built-in name (without the ``-t2i`` suffix)."""
    path = BUILTIN_ARCHITECTURES.get(name)
    if path is None:
        known = sorted(BUILTIN_ARCHITECTURES) + [a + T2I_SUFFIX for a in sorted(BUILTIN_ARCHITECTURES)]
        raise ModelLoadError(f"unknown built-in architecture {name!r}; known: {known}")
    return json.loads(Path(path).read_text())


def build_modules(name: str, kind: str = "ip2p", *, seed: int = 0):
    """``(unet, vae, text_encoder, tokenizer, scheduler, resolution)`` with random weights of a
    built-in architecture, deterministic from ``seed``. ``kind="t2i"`` sets the UNet's input
    channels to the VAE's latent channels."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = architecture_config(name)
    if cfg.get("tokenizer", "openai-clip") != "openai-clip":
        raise ModelLoadError(f"{name}: tokenizer {cfg['tokenizer']!r} is not supported (use 'openai-clip')")
    unet_cfg = dict(cfg["unet"])
    if kind == "t2i":
        unet_cfg["in_channels"] = cfg["vae"]["latent_channels"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    tokenizer = CLIPTokenizer.from_pretrained(str(openai_clip_tokenizer_dir()))
    sched_cls = getattr(diffusers, cfg["scheduler"].get("_class_name", "EulerAncestralDiscreteScheduler"))
    scheduler = sched_cls(**{k: v for k, v in cfg["scheduler"].items() if not k.startswith("_")})
    return unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, cfg.get("resolution")


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


# ---------------------------------------------------------------- weight-free diffusers config folders

def _cache_root() -> Path:
    return Path(os.environ.get("IP2P_CACHE", Path.home() / ".cache" / "ip2p"))


def write_diffusers_config(arch: dict, folder: str | os.PathLike) -> Path:
    """Write a diffusers pipeline folder with configs and tokenizer but no weights, for the
    architecture dict of a built-in (``ip2p/configs/<name>.json``). This is what diffusers'
    ``from_single_file(..., config=folder)`` reads to build the modules the checkpoint fills."""
    import diffusers
    from transformers import CLIPTextConfig

    if arch.get("tokenizer", "openai-clip") != "openai-clip":
        raise ModelLoadError(f"tokenizer {arch['tokenizer']!r} is not supported (use 'openai-clip')")
    f = Path(folder)
    ver = diffusers.__version__
    pub = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    sched = pub(arch["scheduler"])
    sched_cls = arch["scheduler"].get("_class_name", "EulerAncestralDiscreteScheduler")
    files = {
        "model_index.json": {
            "_class_name": "StableDiffusionInstructPix2PixPipeline", "_diffusers_version": ver,
            "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
            "requires_safety_checker": False,
            "scheduler": ["diffusers", sched_cls], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
        "unet/config.json": {"_class_name": "UNet2DConditionModel", "_diffusers_version": ver, **pub(arch["unet"])},
        "vae/config.json": {"_class_name": "AutoencoderKL", "_diffusers_version": ver, **pub(arch["vae"])},
        "scheduler/scheduler_config.json": {"_class_name": sched_cls, "_diffusers_version": ver, **sched},
    }
    for rel, obj in files.items():
        (f / rel).parent.mkdir(parents=True, exist_ok=True)
        (f / rel).write_text(json.dumps(obj, indent=2) + "\n")
    te = CLIPTextConfig(**pub(arch["text_encoder"]))
    te.architectures = ["CLIPTextModel"]
    te.save_pretrained(str(f / "text_encoder"))
    (f / "tokenizer").mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(openai_clip_tokenizer_dir() / name, f / "tokenizer" / name)
    return f


def builtin_config_dir(name: str) -> Path:
    """The weight-free diffusers config folder of a built-in architecture, written once under
    ``$IP2P_CACHE/configs/<name>/`` (default ``~/.cache/ip2p``) and rewritten if its JSON changes."""
    src = BUILTIN_ARCHITECTURES.get(name)
    if src is None:
        raise ModelLoadError(f"unknown built-in architecture {name!r}; known: {sorted(BUILTIN_ARCHITECTURES)}")
    raw = Path(src).read_bytes()
    import diffusers

    stamp = hashlib.sha256(raw + diffusers.__version__.encode()).hexdigest()
    dest = _cache_root() / "configs" / name
    stamp_file = dest / "ip2p_stamp.txt"

    def current() -> bool:
        return stamp_file.exists() and stamp_file.read_text().strip() == stamp

    if current():
        return dest
    from ip2p.util.io import replacing_dir

    with replacing_dir(dest) as tmp:
        write_diffusers_config(json.loads(raw), tmp)
        (tmp / "ip2p_stamp.txt").write_text(stamp + "\n")
    return dest


__all__ = [
    "BUILTIN_ARCHITECTURES",
    "CONFIG_DIR",
    "T2I_SUFFIX",
    "register_architecture",
    "builtin_name",
    "architecture_config",
    "build_modules",
    "openai_clip_tokenizer_dir",
    "write_diffusers_config",
    "builtin_config_dir",
]
