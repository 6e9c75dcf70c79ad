"""Small real CLIP models for the metrics tests: a tiny open_clip CLIP with random weights, saved in
the world folder format (open_clip_config.json + open_clip_model.safetensors) next to a tiny
transformers CLIPTokenizer whose special tokens hold the two highest ids."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY_IMAGE_SIZE = 32
TINY_CONTEXT = 32


def tiny_model_cfg(vocab_size: int) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": TINY_CONTEXT, "vocab_size": vocab_size, "width": 64, "heads": 2, "layers": 2},
    }


def write_tiny_tokenizer(folder: Path, *, specials_last: bool = True) -> int:
    """A CLIPTokenizer folder over single characters (no merges); returns its vocabulary size."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + "!?.,'-"
    pieces = [c for c in chars] + [c + "</w>" for c in chars]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = pieces + specials if specials_last else specials + pieces
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(str(folder))
    return len(tokens)


def make_tiny_clip_folder(
    root: Path,
    name: str = "clip",
    *,
    seed: int = 0,
    tokenizer: str = "hf",
    resize_mode: str = "squash",
    specials_last: bool = True,
) -> Path:
    """Build a tiny random CLIP and save it under ``root/name`` in the world folder format.

    ``tokenizer="hf"``: a CLIPTokenizer at ``root/tokenizer`` named by the relative path
    ``"../tokenizer"``; ``"simple"``: open_clip's bundled BPE tokenizer (vocab 49408).
    """
    import open_clip

    from ip2p.metrics.clip_models import save_clip_folder

    if tokenizer == "hf":
        vocab = write_tiny_tokenizer(root / "tokenizer", specials_last=specials_last)
        cfg = tiny_model_cfg(vocab)
        cfg["text_cfg"]["hf_tokenizer_name"] = "../tokenizer"
    else:
        cfg = tiny_model_cfg(49408)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    pp = {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": resize_mode,
        "image_size": TINY_IMAGE_SIZE,
    }
    return save_clip_folder(root / name, model, cfg, pp)


def random_images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def count_encoder_rows(model) -> dict:
    """Count the rows that reach the image tower and the text embedding of an open_clip CLIP."""
    counts = {"images": 0, "texts": 0}

    def on_image(_module, args):
        counts["images"] += int(args[0].shape[0])

    def on_text(_module, args):
        counts["texts"] += int(args[0].shape[0])

    model.visual.register_forward_pre_hook(on_image)
    model.token_embedding.register_forward_pre_hook(on_text)
    return counts


def cache_writer(db: str, items_path: str, barrier, out_path: str) -> None:
    """Worker process: write ``{key: vector}`` items (two per transaction, reading between writes)
    into a shared on-disk cache, then read every key back."""
    torch.set_num_threads(1)
    from ip2p.metrics.cache import EmbeddingCache

    items = torch.load(items_path)
    keys = list(items)
    cache = EmbeddingCache(db)
    barrier.wait()
    for i in range(0, len(keys), 2):
        cache.get_many(keys[i : i + 2])
        cache.put_many({k: items[k] for k in keys[i : i + 2]})
    reader = EmbeddingCache(db)  # a fresh object: reads from the file, not from memory
    torch.save(reader.get_many(keys), out_path)
