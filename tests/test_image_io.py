"""The one image reader (ip2p.util.io): every PIL mode decodes to what it shows, transparency over
white, EXIF orientation applied; datasets read through it; atomic writes honour the umask."""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p.errors import ImageReadError
from ip2p.util.io import (atomic_write_bytes, decode_image, load_image, load_pil, pil_to_tensor,
                          remove_orphaned_temp_files)

REPO = Path(__file__).resolve().parents[1]
EPS = 1e-6  # exact modes: float32 rounding only
Q = 1.0 / 255 + 1e-6  # modes Pillow converts through 8 bits


def _png_rgb16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one): IHDR bit depth
    16, colour type 2, rows of big-endian uint16 after filter byte 0 (PNG spec, section 11.2.2)."""
    h, w, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _rgb(x: torch.Tensor, y: int = 0, xx: int = 0) -> list[float]:
    return x[:, y, xx].tolist()


def test_16_bit_grey_png_reads_its_value_not_white(tmp_path):
    p = tmp_path / "g16.png"
    Image.fromarray(np.array([[30000, 65535, 0]], dtype=np.uint16)).save(p)
    assert Image.open(p).mode == "I;16"
    x = load_image(p)
    assert x.shape == (3, 1, 3) and x.dtype == torch.float32
    assert _rgb(x, 0, 0) == pytest.approx([30000 / 65535] * 3, abs=EPS)  # 0.4578, was read as 1.0
    assert _rgb(x, 0, 1) == pytest.approx([1.0] * 3, abs=EPS)
    assert _rgb(x, 0, 2) == pytest.approx([0.0] * 3, abs=EPS)


@pytest.mark.parametrize("mode,value,fmt,expected,tol", [
    ("I;16", 30000, "TIFF", 30000 / 65535, EPS),
    ("I", 30000, "TIFF", 30000 / 65535, EPS),
    ("F", 0.25, "TIFF", 0.25, EPS),
    ("F", 1.5, "TIFF", 1.0, EPS),  # float images are in [0, 1]: clamped
    ("L", 100, "PNG", 100 / 255, EPS),
    ("1", 1, "PNG", 1.0, EPS),
])
def test_grey_modes_from_files(tmp_path, mode, value, fmt, expected, tol):
    p = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (2, 2), value).save(p, format=fmt)
    assert Image.open(p).mode == mode
    assert _rgb(load_image(p)) == pytest.approx([expected] * 3, abs=tol)


def test_32_bit_integers_out_of_16_bit_range_and_nan_floats_are_refused(tmp_path):
    p = tmp_path / "i32.tiff"
    Image.new("I", (2, 2), 70000).save(p)
    with pytest.raises(ImageReadError, match="i32.tiff.*0..65535"):
        load_image(p)
    f = tmp_path / "nan.tiff"
    Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32), mode="F").save(f)
    with pytest.raises(ImageReadError, match="NaN"):
        load_image(f)


def test_transparency_is_composited_over_white(tmp_path):
    la = Image.new("LA", (3, 1))
    la.putdata([(100, 0), (100, 255), (100, 128)])
    la.save(tmp_path / "la.png")
    x = load_image(tmp_path / "la.png")
    assert _rgb(x, 0, 0) == pytest.approx([1.0] * 3, abs=EPS)  # fully transparent: the background
    assert _rgb(x, 0, 1) == pytest.approx([100 / 255] * 3, abs=EPS)
    a = 128 / 255
    assert _rgb(x, 0, 2) == pytest.approx([100 / 255 * a + (1 - a)] * 3, abs=EPS)

    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255)])
    rgba.save(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png")
    assert _rgb(x, 0, 0) == pytest.approx([1.0, 1.0, 1.0], abs=EPS)  # was (1, 0, 0): the hidden colour
    assert _rgb(x, 0, 1) == pytest.approx([0.0, 0.0, 1.0], abs=EPS)
    # another stated background
    assert _rgb(load_image(tmp_path / "rgba.png", background=(0.0, 0.0, 0.0)), 0, 0) == pytest.approx([0, 0, 0])

    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putdata([0, 1])
    p.save(tmp_path / "p.png", transparency=1)
    assert Image.open(tmp_path / "p.png").mode == "P"
    x = load_image(tmp_path / "p.png")
    assert _rgb(x, 0, 0) == pytest.approx([1.0, 0.0, 0.0], abs=EPS)
    assert _rgb(x, 0, 1) == pytest.approx([1.0, 1.0, 1.0], abs=EPS)  # the transparent index


def test_palette_without_transparency_and_cmyk(tmp_path):
    p = Image.new("P", (1, 1))
    p.putpalette([10, 20, 30] + [0] * 765)
    p.save(tmp_path / "p.png")
    assert _rgb(load_image(tmp_path / "p.png")) == pytest.approx([10 / 255, 20 / 255, 30 / 255], abs=EPS)
    Image.new("CMYK", (2, 2), (128, 0, 0, 128)).save(tmp_path / "c.tiff")
    assert Image.open(tmp_path / "c.tiff").mode == "CMYK"
    k = 1 - 128 / 255
    # R = (1 - C)(1 - K), G = B = (1 - K)
    assert _rgb(load_image(tmp_path / "c.tiff")) == pytest.approx([k * k, k, k], abs=Q)


def test_16_bit_rgb_png(tmp_path):
    px = np.array([[[30000, 65535, 0], [1000, 20000, 50000]]], dtype=np.uint16)
    p = _png_rgb16(tmp_path / "rgb16.png", px)
    x = load_image(p)
    assert x.shape == (3, 1, 2)
    assert _rgb(x, 0, 0) == pytest.approx([30000 / 65535, 1.0, 0.0], abs=Q)
    assert _rgb(x, 0, 1) == pytest.approx([1000 / 65535, 20000 / 65535, 50000 / 65535], abs=Q)


def test_in_memory_modes_through_pil_to_tensor():
    assert _rgb(pil_to_tensor(Image.new("I;16", (1, 1), 30000))) == pytest.approx([30000 / 65535] * 3, abs=EPS)
    assert _rgb(pil_to_tensor(Image.new("I", (1, 1), 30000))) == pytest.approx([30000 / 65535] * 3, abs=EPS)
    assert _rgb(pil_to_tensor(Image.new("F", (1, 1), 0.75))) == pytest.approx([0.75] * 3, abs=EPS)
    assert _rgb(pil_to_tensor(Image.new("RGBA", (1, 1), (0, 0, 0, 0)))) == pytest.approx([1.0] * 3, abs=EPS)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (2, 1))
    im.putdata([(255, 0, 0), (0, 0, 255)])  # stored: red | blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "o.png", exif=exif)
    x = load_image(tmp_path / "o.png")
    assert x.shape == (3, 2, 1)  # shown upright: 1 wide, 2 tall
    assert _rgb(x, 0, 0) == pytest.approx([1, 0, 0]) and _rgb(x, 1, 0) == pytest.approx([0, 0, 1])
    assert load_pil(tmp_path / "o.png").size == (1, 2)


def test_decoding_bytes_and_errors_name_the_source(tmp_path):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.array([[30000]], dtype=np.uint16)).save(buf, format="PNG")
    assert _rgb(decode_image(buf.getvalue(), where="row 3")) == pytest.approx([30000 / 65535] * 3, abs=EPS)
    with pytest.raises(ImageReadError, match="row 7"):
        decode_image(buf.getvalue()[:20], where="row 7")
    bad = tmp_path / "bad.png"
    bad.write_bytes(buf.getvalue()[:30])
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image(bad)


def test_datasets_read_through_the_one_reader(tmp_path):
    """A JSONL dataset row with a 16-bit input, an RGBA target and an RGBA mask."""
    from ip2p.data import open_dataset

    Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16)).save(tmp_path / "in.png")
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "out.png")
    mask = Image.new("L", (4, 4), 0)
    mask.putpixel((1, 2), 255)
    mask.save(tmp_path / "mask.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"input_image": "in.png", "edited_image": "out.png",
                                                  "mask": "mask.png", "instruction": "x"}) + "\n")
    ex = open_dataset(f"jsonl:{tmp_path / 'm.jsonl'}")[0]
    assert ex.load_input()[:, 0, 0].tolist() == pytest.approx([30000 / 65535] * 3, abs=EPS)
    assert ex.load_target()[:, 0, 0].tolist() == pytest.approx([1.0] * 3)
    m = ex.load_mask()
    assert m.dtype == torch.bool and m.sum() == 1 and m[2, 1]


def test_no_other_image_decoder_in_the_packages():
    """Every package module reads images through ip2p.util.io (no stray Image.open/convert)."""
    offenders = []
    for pkg in ("ip2p", "bench", "baselines"):
        for path in (REPO / pkg).rglob("*.py"):
            if path == REPO / "ip2p" / "util" / "io.py":
                continue
            text = path.read_text()
            if re.search(r"Image\.open\(", text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = atomic_write_bytes(tmp_path / "a" / "f.bin", b"data")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"data"
    assert p.stat().st_mode & 0o777 == mode


def test_orphaned_temp_files_are_removed(tmp_path):
    atomic_write_bytes(tmp_path / "keep.txt", b"x")
    orphan = tmp_path / "sub" / ".f.png.abc123.tmp"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half")
    removed = remove_orphaned_temp_files(tmp_path)
    assert removed == [orphan] and not orphan.exists() and (tmp_path / "keep.txt").exists()
