"""Content hashes: of weights (model identity), files and tensors (cache keys, file names)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import torch


def hash_state_dict(state: Mapping[str, torch.Tensor] | torch.nn.Module, length: int = 16) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order.

    Two modules with identical weights hash equal whatever their device; any changed value,
    shape, dtype or name changes the hash.
    """
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # reshape: 0-dim tensors too
    return h.hexdigest()[:length]


def hash_file(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def hash_bytes(data: bytes, length: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def hash_tensor(x: torch.Tensor, length: int = 16) -> str:
    """Hash of a tensor's dtype, shape and values (used to key images in caches)."""
    return hash_state_dict({"x": x}, length=length)


def hash_folder(path: str | os.PathLike, suffixes=(".safetensors", ".bin", ".json", ".txt"), length: int = 16) -> str:
    """Hash of every weight/config file under a folder (relative name + content)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in suffixes:
            h.update(str(p.relative_to(root)).encode())
            h.update(hash_file(p, length=64).encode())
    return h.hexdigest()[:length]
