"""Image IO and atomic file writes.

Images inside the project are float tensors ``[3, H, W]`` (or ``[N, 3, H, W]``) in [0, 1];
files and PIL stay at the edges. Every write goes to a temporary name in the same folder and
is renamed into place, so a reader never sees a half-written file (DESIGN invariant 3).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

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


# ---------------------------------------------------------------- whole folders

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system does not offer it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def recover_dir(dest: str | os.PathLike) -> None:
    """Finish a swap that was interrupted between its two renames (systems without an atomic
    exchange): when ``dest`` is missing and its old copy is beside it, put the old copy back."""
    dest = Path(dest)
    if dest.exists() or not dest.parent.is_dir():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"))
    if olds:
        os.rename(olds[-1], dest)


def swap_in_dir(new: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Make folder ``new`` (beside ``dest``) become ``dest``; the old ``dest``, if any, is removed.
    At every instant ``dest`` is the old folder or the new one, never neither (an atomic exchange
    where the system has one; elsewhere two renames, and ``recover_dir`` undoes a half-done swap)."""
    new, dest = Path(new), Path(dest)
    recover_dir(dest)
    if not dest.exists():
        os.rename(new, dest)
        return dest
    if _exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)  # now holds the old folder
        return dest
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.rename(dest, old)
    os.rename(new, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


@contextlib.contextmanager
def replacing_dir(dest: str | os.PathLike, *, start_from_existing: bool = False) -> Iterator[Path]:
    """Write a whole folder at once: yields an empty folder beside ``dest`` (a copy of ``dest`` when
    ``start_from_existing``); when the block ends without error it is swapped in as ``dest``
    (``swap_in_dir``); on error it is removed and ``dest`` is left as it was. Folder modes follow
    the user's umask."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.new-"))
    try:
        if start_from_existing and dest.is_dir():
            shutil.rmtree(tmp)
            shutil.copytree(dest, tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        swap_in_dir(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
