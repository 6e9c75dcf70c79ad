"""Image IO and atomic file writes.

Images inside the project are float tensors ``[3, H, W]`` (or ``[N, 3, H, W]``) in [0, 1];
files and PIL stay at the edges. ``load_image`` / ``decode_image`` are the one image reader of the
project (CLI, editors, datasets, masks, metrics, stored results): every PIL mode maps to RGB in
[0, 1] by the table above ``image_to_array``, transparency over white, EXIF orientation applied. Every write goes to a temporary name in the same folder and
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
from PIL import Image, ImageOps, UnidentifiedImageError

from ip2p.errors import ImageReadError


BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)  # what transparent pixels are composited over
TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else by the
    classic set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename. The file gets the
    permissions a plain ``open(path, "w")`` would give (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
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


def check_output_path(path: str | os.PathLike, *, option: str, kind: str = "file") -> None:
    """Refuse, before any work is done, an output ``path`` that cannot be written: for a ``file``,
    a folder or an unwritable place; for a ``folder``, a file or an unwritable place. The nearest
    existing folder is probed by creating (and removing) a temporary file in it, which is what
    the later write will do (permission bits alone mislead root and read-only mounts)."""
    from ip2p.errors import SpecError

    path = Path(path)
    if kind == "file" and path.is_dir():
        raise SpecError(f"{option} {path}: is a folder; give a file name (e.g. {path / 'out.png'})")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise SpecError(f"{option} {path}: is a file, not a folder; give a folder path")
    probe = path.parent if kind == "file" else path
    probe = probe if str(probe) else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SpecError(f"{option} {path}: {probe} is a file, not a folder; choose a path under a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise SpecError(f"{option} {path}: cannot write in {probe} ({e.strerror or e}); "
                        "choose a place you can write to") from None


def remove_orphaned_temp_files(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Delete temporary files ``atomic_write_bytes`` left behind when its process was killed
    between creating and renaming them. Only call it when no writer is active in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f"**/.*{TMP_SUFFIX}" if recursive else f".*{TMP_SUFFIX}"
    removed = []
    for p in folder.glob(pattern):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


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
        os.chmod(tmp, 0o777 & ~current_umask())
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
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{where or path}: not UTF-8 text (byte at offset {e.start}); not a JSON file of ours") from None
    except json.JSONDecodeError as e:
        raise error(f"{where or path}: not valid JSON: {e}") from e


def read_json_or(path: str | os.PathLike, default: Any, *, kind: type = dict) -> Any:
    """The JSON document in ``path`` when it is readable, UTF-8, valid and a ``kind``; else ``default``
    (for the run folder's own bookkeeping files, which a reader must survive being damaged)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8 (UnicodeDecodeError), not JSON
        return default
    return doc if isinstance(doc, kind) else default


def pil_to_tensor(img: Image.Image, *, background: tuple[float, float, float] = BACKGROUND) -> torch.Tensor:
    """PIL image of any mode -> float ``[3, H, W]`` in [0, 1] (RGB); see ``image_to_array``."""
    return torch.from_numpy(image_to_array(img, background=background)).permute(2, 0, 1).contiguous()


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


# ---- reading images ------------------------------------------------------------------------
#
# Every image the project reads (CLI inputs, dataset rows, masks, stored results) goes through
# ``image_to_array``, so that every PIL mode means what it shows:
#   1, L, P, RGB, RGBX, CMYK, YCbCr  8-bit: value / 255 (CMYK: R = (1 - C)(1 - K), Pillow's formula)
#   I;16, I;16L, I;16B, I;16N        16-bit grey: value / 65535 (a 30000 reads as 0.4578, not white)
#   I                                32-bit integer, as Pillow decodes 16-bit PNG/PGM/TIFF: value / 65535;
#                                    values outside 0..65535 are refused (the scale would be a guess)
#   F                                32-bit float: already in [0, 1] (clamped); NaN/Inf refused
#   LA, La, PA, RGBA, RGBa           transparency composited over ``background`` (default white,
#                                    ``BACKGROUND``), as a page shows a transparent image
#   P with a transparency entry      the same, through RGBA
# 16-bit colour PNGs are decoded by Pillow to 8 bits per channel (its decoder keeps the high byte),
# so they read to within 1/255. EXIF orientation (tag 274) is applied first, so a photo stored
# sideways reads upright, as viewers show it. Embedded ICC profiles are not applied.

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def image_to_array(img: Image.Image, *, background: tuple[float, float, float] = BACKGROUND,
                   where: str = "image") -> np.ndarray:
    """Any PIL image -> float32 ``[H, W, 3]`` RGB in [0, 1] (the table above). ``ImageReadError``
    naming ``where`` for values that have no defined meaning (NaN, 32-bit integers out of range)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        grey = np.asarray(img).astype(np.float64)
        if mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ImageReadError(f"{where}: 32-bit integer image with values {grey.min():.0f}..{grey.max():.0f}; "
                                 "only 0..65535 (16-bit) has a defined scale; convert it to 8 or 16 bits")
        return np.repeat((grey / 65535.0).astype(np.float32)[..., None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        if not np.isfinite(grey).all():
            raise ImageReadError(f"{where}: float image holds NaN or Inf values")
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply first
        img = img.convert("LA" if mode == "La" else "RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
    elif mode == "RGB" and "transparency" in img.info:
        img = img.convert("RGBA")
    mode = img.mode
    if mode in ("LA", "RGBA"):
        arr = np.asarray(img, dtype=np.float32) / 255.0
        colour = np.repeat(arr[..., :1], 3, axis=2) if mode == "LA" else arr[..., :3]
        alpha = arr[..., -1:]
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        return (colour * alpha + bg * (1.0 - alpha)).astype(np.float32)
    if mode != "RGB":
        try:
            img = img.convert("RGB")  # 1, L, CMYK, YCbCr, RGBX, LAB, HSV: Pillow's conversions
        except (ValueError, OSError) as e:
            raise ImageReadError(f"{where}: cannot convert PIL mode {mode!r} to RGB: {e}") from e
    return np.asarray(img, dtype=np.float32) / 255.0


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a no-op without one)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block: show the pixels as stored
        return im


def _decode(opener, where: str, background) -> np.ndarray:
    from ip2p.util.limits import check_input_pixels

    try:
        with opener() as im:
            too_big = check_input_pixels(im.width, im.height, where)  # from the header, before decoding
            if too_big:
                raise ImageReadError(too_big)
            im.load()
            im = _upright(im)
            return image_to_array(im, background=background, where=where)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot decode {where}: {e}") from e


def _check_file(p: Path, what: str) -> None:
    if not p.exists():
        raise ImageReadError(f"{what} file not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"{what} path is a folder, not an image file: {p}")


def load_image(path: str | os.PathLike, *, what: str = "image",
               background: tuple[float, float, float] = BACKGROUND) -> torch.Tensor:
    """Read an image file as float ``[3, H, W]`` in [0, 1] RGB, at its full bit depth (see the
    table above); ``ImageReadError`` naming the file and the problem."""
    p = Path(path)
    _check_file(p, what)
    arr = _decode(lambda: Image.open(p), f"{what} file {p}", background)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_pil(path: str | os.PathLike, *, what: str = "image",
             background: tuple[float, float, float] = BACKGROUND) -> Image.Image:
    """Read an image file as an 8-bit PIL RGB image (``load_image`` rounded to 8 bits)."""
    return tensor_to_pil(load_image(path, what=what, background=background))


def decode_image(data: bytes, *, where: str, background: tuple[float, float, float] = BACKGROUND) -> torch.Tensor:
    """Decode encoded image bytes (PNG, JPEG, ...) as float ``[3, H, W]`` in [0, 1], like ``load_image``."""
    arr = _decode(lambda: Image.open(io.BytesIO(data)), f"image bytes from {where}", background)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def decode_image_bytes(data: bytes, *, where: str, background: tuple[float, float, float] = BACKGROUND) -> Image.Image:
    """Decode encoded image bytes as an 8-bit PIL RGB image, naming ``where`` they came from on failure."""
    return tensor_to_pil(decode_image(data, where=where, background=background))


# ---- reading as the benchmarks' authors read -----------------------------------------------
#
# The published benchmarks' own scorers (MagicBrush ``evaluation/image_eval.py``, PnPInversion
# ``evaluation/evaluate.py``) read every image with plain PIL: ``Image.open(path).convert("RGB")``.
# That drops transparency (the stored colour of transparent pixels shows) and ignores the EXIF
# orientation. Inside a benchmark's scoring the readers use this (``scoring: authors``); the
# project's reader above stays for the user's own images.

def _decode_plain(opener, where: str) -> torch.Tensor:
    from ip2p.util.limits import check_input_pixels

    try:
        with opener() as im:
            too_big = check_input_pixels(im.width, im.height, where)
            if too_big:
                raise ImageReadError(too_big)
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot decode {where}: {e}") from e
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_image_plain(path: str | os.PathLike, *, what: str = "image") -> torch.Tensor:
    """An image file as the benchmarks' scorers read it (``Image.open(p).convert("RGB")``), as float
    ``[3, H, W]`` in [0, 1]; ``ImageReadError`` naming the file otherwise."""
    p = Path(path)
    _check_file(p, what)
    return _decode_plain(lambda: Image.open(p), f"{what} file {p}")


def decode_image_plain(data: bytes, *, where: str) -> torch.Tensor:
    """Encoded image bytes as the benchmarks' scorers read them (see ``load_image_plain``)."""
    return _decode_plain(lambda: Image.open(io.BytesIO(data)), f"image bytes from {where}")


SCORING_CHOICES = ("authors", "ours")  # how a benchmark reader reads images: as its authors, or as this project


def image_loader(scoring: str):
    """``load_image`` or ``load_image_plain`` for a benchmark reader's ``scoring`` option."""
    if scoring not in SCORING_CHOICES:
        from ip2p.errors import DataRowError

        raise DataRowError(f"option scoring: {scoring!r} is not one of {', '.join(SCORING_CHOICES)}")
    return load_image_plain if scoring == "authors" else load_image


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a ``[3, H, W]`` tensor in [0, 1] as PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(x))
