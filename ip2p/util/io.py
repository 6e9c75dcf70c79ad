"""Image IO and atomic file writes.

Images inside the project are float tensors ``[3, H, W]`` (or ``[N, 3, H, W]``) in [0, 1];
files and PIL stay at the edges. Every write goes to a temporary name in the same folder and
is renamed into place, so a reader never sees a half-written file (DESIGN invariant 3).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ip2p.errors import ImageReadError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, error: type[Exception], *, missing: str, where: str | None = None) -> Any:
    """The JSON document in ``path``; ``error(missing)`` when there is no such file, and
    ``error("<where>: not valid JSON: ...")`` (``where`` defaults to the path) when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{where or path}: not valid JSON: {e}") from e


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> float ``[3, H, W]`` in [0, 1] (RGB)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """float ``[3, H, W]`` in [0, 1] -> PIL RGB image (rounded to 8 bits)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] image tensor, got shape {tuple(x.shape)}")
    arr = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def png_bytes(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    tensor_to_pil(x).save(buf, format="PNG")
    return buf.getvalue()


def load_pil(path: str | os.PathLike, *, what: str = "image") -> Image.Image:
    """Open an image file fully, or raise ImageReadError naming the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{what} file not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"{what} path is a folder, not an image file: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode {what} file {p}: {e}") from e


def load_image(path: str | os.PathLike, *, what: str = "image") -> torch.Tensor:
    """Read an image file as float ``[3, H, W]`` in [0, 1]."""
    return pil_to_tensor(load_pil(path, what=what))


def decode_image_bytes(data: bytes, *, where: str) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...), naming ``where`` they came from on failure."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode image bytes from {where}: {e}") from e


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a ``[3, H, W]`` tensor in [0, 1] as PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(x))
