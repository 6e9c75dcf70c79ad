"""Size limits on images, checked before any expensive work (decoding, resizing, sampling).

- ``max_input_pixels()``: the largest image the reader decodes, from its header, before decoding:
  40 megapixels by default (an 8000x8000 PNG, 64 MP, is refused at once instead of taking a minute
  and gigabytes). Environment variable ``IP2P_MAX_INPUT_PIXELS`` overrides it.
- ``max_side(resolution)``: the longest side an editor processes an input to: 4 x the model's
  resolution by default, at least 1024 px (2048 px at 512). The paper's resize scales the long
  side to the resolution but rounds the short side *up* to 64 first, so an extreme aspect ratio (8x2000) asks for 64x16000;
  that is refused naming the sizes. ``IP2P_MAX_SIDE`` overrides it.
- ``min_side(vae_factor)``: the shortest side a model can take: two latent pixels (a 1x1 latent
  has one value per group in the VAE's group norms).
"""
from __future__ import annotations

import os

DEFAULT_MAX_INPUT_PIXELS = 40_000_000
MAX_SIDE_FACTOR = 4
MAX_SIDE_FLOOR = 1024  # small models (resolution 16-64) still take ordinary photos' aspect ratios


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        from ip2p.errors import SpecError

        raise SpecError(f"{name}={raw!r}: must be a positive integer") from None
    if value < 1:
        from ip2p.errors import SpecError

        raise SpecError(f"{name}={raw!r}: must be a positive integer")
    return value


def max_input_pixels() -> int:
    return _env_int("IP2P_MAX_INPUT_PIXELS", DEFAULT_MAX_INPUT_PIXELS)


def max_side(resolution: int) -> int:
    return _env_int("IP2P_MAX_SIDE", max(MAX_SIDE_FACTOR * int(resolution), MAX_SIDE_FLOOR))


def min_side(vae_factor: int) -> int:
    return 2 * int(vae_factor)


def check_input_pixels(width: int, height: int, where: str) -> str | None:
    """None when a ``width`` x ``height`` image may be decoded, else why not (one sentence)."""
    limit = max_input_pixels()
    if width * height > limit:
        return (f"{where}: {width}x{height} = {width * height / 1e6:.1f} megapixels, more than the limit of "
                f"{limit / 1e6:g} MP (IP2P_MAX_INPUT_PIXELS); downscale it first or raise the limit")
    return None


def check_processed_size(width: int, height: int, *, resolution: int, vae_factor: int, where: str,
                         how: str) -> str | None:
    """None when an input processed to ``width`` x ``height`` (by ``how``) can be edited, else why not."""
    top, low = max_side(resolution), min_side(vae_factor)
    if max(width, height) > top:
        return (f"{where}: {how} gives {width}x{height}, a side longer than {top} px (IP2P_MAX_SIDE, default "
                f"{MAX_SIDE_FACTOR} x the model's resolution {resolution}, at least {MAX_SIDE_FLOOR}); crop the image "
                "to a less extreme aspect ratio, or raise the limit")
    if min(width, height) < low:
        return (f"{where}: {how} gives {width}x{height}, a side shorter than {low} px (two latent pixels of this "
                "model); use a larger image or resize='paper'")
    return None
