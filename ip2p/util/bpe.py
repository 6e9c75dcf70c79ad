"""The byte-level alphabet of CLIP's BPE: each of the 256 bytes as one printable character."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """byte -> character. Printable bytes stand for themselves; the other 68 map to 256, 257, ...
    in byte order. Insertion order is CLIP's (printable bytes first), which fixes vocabulary ids."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table
