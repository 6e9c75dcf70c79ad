"""Loading CLIP models (open_clip) without ever downloading: built-in names with a tag or a weights
file, local folders in open_clip's hf-hub layout, and the small world's ``world:clip`` models.

The folder format (what the world's recipes write and :func:`save_clip_folder` writes)::

    <folder>/open_clip_config.json      {"model_cfg": {embed_dim, vision_cfg, text_cfg, ...},
                                         "preprocess_cfg": {"mean": [...], "std": [...],
                                             "interpolation": "bicubic", "resize_mode": "squash",
                                             "image_size": 64}}
    <folder>/open_clip_model.safetensors  the model's state dict

``text_cfg.hf_tokenizer_name`` may be a path starting with ``.`` (e.g. ``"../sd/tokenizer"``),
resolved against the folder holding ``open_clip_config.json``; it names a transformers
``CLIPTokenizer`` folder whose vocabulary puts ``<|startoftext|>`` and ``<|endoftext|>`` at the two
highest ids, so open_clip's argmax pooling finds the end token. Without ``hf_tokenizer_name`` the
model uses open_clip's bundled BPE tokenizer (vocab_size 49408).

Everyone who needs a CLIP (metrics, the Text2Live-style baseline, the world's tests) calls
:func:`load_clip`; the returned :class:`LoadedClip` carries the identity that goes into every
metric spec record (backbone, pretrained, weights hash).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ip2p.errors import ModelLoadError
from ip2p.util.hashing import hash_bytes, hash_folder, hash_state_dict
from ip2p.util.io import read_json

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass
class LoadedClip:
    """A CLIP ready to encode: the open_clip model (eval mode), its tokenizer (``list[str] ->
    LongTensor [N, context_length]``), its preprocessing config (size, mean, std, interpolation,
    resize_mode, fill_color) and its identity (backbone, pretrained, weights_hash, source)."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess_cfg: dict[str, Any]
    identity: dict[str, str] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.preprocess_cfg["size"]
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_clip(
    model_name: str = "ViT-L-14",
    pretrained: str | None = "openai",
    device: str | torch.device | None = None,
    *,
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> LoadedClip:
    """Load a CLIP model and tokenizer from local files only.

    ``model_name``:
      - a built-in open_clip architecture (``"ViT-L-14"``); ``pretrained`` is then an open_clip tag
        (``"openai"``), looked up in the local caches only, or a path to a weights file;
        ``pretrained=None`` or ``"random"`` gives random weights (tests, benchmarks);
      - ``world:<name>`` (``world:clip``, ``world:clip-guide``), a folder path, or
        ``local-dir:<folder>``: a folder in the format above; ``pretrained`` is ignored.

    ``precision``: ``"fp32"`` (default, exact metrics) or ``"fp16"``/``"bf16"`` (open_clip's mixed
    precision). The weights hash is taken in fp32 before any cast, so it names the weights, not the
    precision. Raises ModelLoadError naming the file to place and where when weights are missing.
    """
    from ip2p.models import resolve_source

    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision: expected 'fp32', 'fp16' or 'bf16', got {precision!r}")
    dev = default_device(device)
    source = resolve_source(model_name)  # world:<name> -> folder; raises ModelLoadError if not built
    folder = source[len("local-dir:"):] if source.startswith("local-dir:") else source
    if os.path.isdir(folder):
        model, tokenizer, pp, pretrained_id, arch, tok_id = _load_folder(Path(folder), str(model_name))
    else:
        model, tokenizer, pp, pretrained_id, arch, tok_id = _load_builtin(str(model_name), pretrained, cache_dir)
    model.eval()
    weights_hash = hash_state_dict(model)
    to_low_precision(model, dev, precision)
    for p in model.parameters():
        p.requires_grad_(False)
    identity = {
        "backbone": str(model_name),
        "pretrained": pretrained_id,
        "weights_hash": weights_hash,
        "source": str(source),
        "precision": precision,
        "arch": arch,
        "tokenizer": tok_id,
    }
    return LoadedClip(model=model, tokenizer=tokenizer, preprocess_cfg=pp, identity=identity)


def to_low_precision(model: torch.nn.Module, device: torch.device, precision: str) -> None:
    """Move to ``device``; for fp16/bf16 cast weights the way OpenAI's CLIP does (open_clip's
    ``convert_weights_to_lp``: linear/conv/attention weights and projections; norms stay fp32)."""
    from open_clip.model import convert_weights_to_lp

    model.to(device)
    if precision in ("fp16", "bf16"):
        convert_weights_to_lp(model, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


# ----------------------------------------------------------------------------- built-in names
def _load_builtin(model_name: str, pretrained: str | None, cache_dir: str | None):
    import open_clip

    arch = model_name.replace("/", "-")
    if arch not in open_clip.list_models():
        raise ModelLoadError(
            f"model_name {model_name!r}: not an open_clip architecture, not world:<name> and not an "
            f"existing folder; built-in architectures include ViT-B-32, ViT-B-16, ViT-L-14 "
            f"(see open_clip.list_models())"
        )
    overrides: dict[str, Any] = {}
    quick_gelu = False
    if pretrained in (None, "", "random", "none"):
        weights, pretrained_id = None, "random"
    elif os.path.isfile(pretrained):
        weights, pretrained_id = pretrained, os.path.abspath(pretrained)
    else:
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ModelLoadError(
                f"pretrained {pretrained!r} for {arch}: neither a weights file that exists nor a "
                f"known open_clip tag (tags: {', '.join(tags) or 'none'})"
            )
        weights = _find_tag_weights(arch, pretrained, tag_cfg, cache_dir)
        pretrained_id = pretrained
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        overrides = {k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg}
    try:
        model = open_clip.create_model(
            arch,
            pretrained=weights,
            force_quick_gelu=quick_gelu,
            force_preprocess_cfg=overrides or None,
            device="cpu",
        )
    except ModelLoadError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/KeyError on bad files
        raise ModelLoadError(f"cannot load {arch} weights from {weights}: {e}") from e
    tokenizer = open_clip.get_tokenizer(arch)
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    arch_id = arch + ("+quick_gelu" if quick_gelu else "")
    tok_id = f"open_clip:{type(tokenizer).__name__}:{getattr(tokenizer, 'context_length', '')}"
    return model, tokenizer, pp, pretrained_id, arch_id, tok_id


def expected_tag_files(arch: str, tag: str, tag_cfg: dict, cache_dir: str | None = None) -> list[str]:
    """Where a tag's weights may be placed for :func:`load_clip` to find them (no download)."""
    places = []
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        from huggingface_hub.constants import HF_HUB_CACHE

        root = cache_dir or HF_HUB_CACHE
        folder = "models--" + repo.replace("/", "--")
        for n in names:
            places.append(f"{root}/{folder}/snapshots/<revision>/{n} (Hugging Face repo {repo}, file {n})")
    url = tag_cfg.get("url", "")
    if url:
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        places.append(f"{os.path.join(root, os.path.basename(url))} (from {url})")
    return places


def _find_tag_weights(arch: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> str:
    if tag_cfg.get("file"):
        if os.path.isfile(tag_cfg["file"]):
            return tag_cfg["file"]
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import hf_hub_download

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        from huggingface_hub.constants import HF_HUB_CACHE

        for n in names:
            try:
                return hf_hub_download(repo_id=repo, filename=n, cache_dir=cache_dir, local_files_only=True)
            except Exception:
                pass
            # placed by hand, without refs/main: any snapshot holding the file
            snaps = sorted(Path(cache_dir or HF_HUB_CACHE).glob(f"models--{repo.replace('/', '--')}/snapshots/*/{n}"))
            if snaps:
                return str(snaps[-1])
    url = tag_cfg.get("url", "")
    if url:
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(path):
            return path
    places = "\n  ".join(expected_tag_files(arch, tag, tag_cfg, cache_dir))
    raise ModelLoadError(
        f"CLIP weights for {arch} pretrained={tag!r} are not on this machine and nothing is downloaded. "
        f"Place the weights file in one of:\n  {places}\n"
        f"or pass pretrained=<path to the weights file>"
        + (" (these weights use QuickGELU: pass model_name=" + arch + "-quickgelu with a file path)"
           if tag_cfg.get("quick_gelu") else "")
    )


# ----------------------------------------------------------------------------- folders
def read_clip_folder_config(folder: str | os.PathLike) -> dict:
    """Read and check ``open_clip_config.json`` of a CLIP folder."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    cfg = read_json(cfg_path, ModelLoadError, where=f"CLIP folder {folder}: {CONFIG_NAME}",
                    missing=f"CLIP folder {folder}: {CONFIG_NAME} is missing (expected the open_clip hf-hub layout)")
    mc = cfg.get("model_cfg")
    if not isinstance(mc, dict) or not all(k in mc for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelLoadError(
            f"CLIP folder {folder}: {CONFIG_NAME} field 'model_cfg' must hold embed_dim, vision_cfg and text_cfg"
        )
    return cfg


def _folder_weights(folder: Path) -> Path:
    for n in (WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / n).is_file():
            return folder / n
    raise ModelLoadError(f"CLIP folder {folder}: weights file {WEIGHTS_NAME} is missing; place the state dict there")


def _load_folder(folder: Path, name: str):
    import copy

    import open_clip
    from open_clip.factory import load_checkpoint

    cfg = read_clip_folder_config(folder)
    model_cfg = copy.deepcopy(cfg["model_cfg"])
    pp_in = cfg.get("preprocess_cfg", {}) or {}
    weights = _folder_weights(folder)
    custom_text = bool(model_cfg.pop("custom_text", False)) or "hf_model_name" in model_cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        model = cls(**model_cfg)
        load_checkpoint(model, str(weights), strict=True)
    except Exception as e:
        raise ModelLoadError(f"CLIP folder {folder}: {weights.name} does not fit model_cfg: {e}") from e
    size = model.visual.image_size
    pp = {
        "size": tuple(size) if isinstance(size, (tuple, list)) else int(size),
        "mode": "RGB",
        "mean": tuple(pp_in.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": tuple(pp_in.get("std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": pp_in.get("interpolation", "bicubic"),
        "resize_mode": pp_in.get("resize_mode", "shortest"),
        "fill_color": pp_in.get("fill_color", 0),
    }
    open_clip.model.set_model_preprocess_cfg(model, pp)
    tokenizer, tok_id = _folder_tokenizer(folder, cfg["model_cfg"]["text_cfg"])
    _check_tokenizer_pooling(folder, model_cfg["text_cfg"], tokenizer)
    # architecture id: the config itself, so that equal folders at different paths share cache keys
    arch_id = "cfg:" + hash_bytes(json.dumps(cfg["model_cfg"], sort_keys=True).encode())
    return model, tokenizer, pp, weights.name, arch_id, tok_id


def _folder_tokenizer(folder: Path, text_cfg: dict):
    import open_clip

    ctx = int(text_cfg.get("context_length", 77))
    name = text_cfg.get("hf_tokenizer_name")
    if not name:
        return open_clip.SimpleTokenizer(context_length=ctx), f"open_clip:SimpleTokenizer:{ctx}"
    if name.startswith("."):
        src = (folder / name).resolve()
    elif any((folder / f).is_file() for f in _TOKENIZER_FILES):
        src = folder
    else:
        src = Path(name)
    if not src.is_dir() and not name.startswith("."):
        try:  # a hub id already in the local Hugging Face cache
            from open_clip.tokenizer import HFTokenizer

            tok = HFTokenizer(name, context_length=ctx, tokenizer_mode=text_cfg.get("tokenizer_mode"),
                              local_files_only=True, **(text_cfg.get("tokenizer_kwargs") or {}))
            return tok, f"hf-hub:{name}:{ctx}"
        except Exception:
            pass
    if not src.is_dir():
        raise ModelLoadError(
            f"CLIP folder {folder}: text_cfg.hf_tokenizer_name {name!r} -> {src} is not a tokenizer folder; "
            f"place a transformers CLIPTokenizer there (vocab.json, merges.txt) or fix the path "
            f"(relative paths start with '.' and are resolved against {folder})"
        )
    try:
        from open_clip.tokenizer import HFTokenizer

        tok = HFTokenizer(
            str(src),
            context_length=ctx,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            local_files_only=True,
            **(text_cfg.get("tokenizer_kwargs") or {}),
        )
    except Exception as e:
        raise ModelLoadError(f"CLIP folder {folder}: cannot load tokenizer from {src}: {e}") from e
    return tok, f"hf:{hash_folder(src)}:{ctx}"


def _check_tokenizer_pooling(folder: Path, text_cfg: dict, tokenizer) -> None:
    """argmax pooling reads the feature at the highest token id: that must be the end token."""
    ids = tokenizer(["a"])[0]
    vocab = int(text_cfg.get("vocab_size", 49408))
    if int(ids.max()) >= vocab:
        raise ModelLoadError(
            f"CLIP folder {folder}: tokenizer yields id {int(ids.max())} >= text_cfg.vocab_size {vocab}; "
            f"set vocab_size to the tokenizer's vocabulary size"
        )
    if text_cfg.get("pool_type", "argmax") == "argmax" and hasattr(tokenizer, "tokenizer"):
        eos = tokenizer.tokenizer.eos_token_id
        if eos is not None and int(ids[int(ids.argmax())]) != eos:
            raise ModelLoadError(
                f"CLIP folder {folder}: the tokenizer's <|endoftext|> (id {eos}) is not its highest id, so "
                f"argmax pooling would read the wrong token; give <|startoftext|> and <|endoftext|> the two "
                f"highest ids in vocab.json"
            )


def save_clip_folder(
    folder: str | os.PathLike,
    model: torch.nn.Module,
    model_cfg: dict,
    preprocess_cfg: dict,
) -> Path:
    """Write ``model`` in the folder format above (config and safetensors, each atomically).

    ``model_cfg`` is the open_clip config the model was built from (embed_dim, vision_cfg,
    text_cfg); ``preprocess_cfg`` holds mean, std, interpolation, resize_mode and image_size.
    """
    from safetensors.torch import save

    from ip2p.util.io import atomic_write_bytes, atomic_write_json

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(state))
    atomic_write_json(folder / CONFIG_NAME, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    return folder
