"""Source prefixes: names like ``world:ip2p`` that a package maps to a model folder.

``resolve_source("world:ip2p")`` asks the resolver registered for the prefix ``world``. Resolvers
come from ``register_source_prefix`` or from the ``ip2p.sources`` entry-point group (name = the
prefix, value = a callable taking the part after the colon and returning a path), loaded on the
first lookup of an unknown prefix. The loading layer (``ip2p.models``) therefore knows no package
that ships models: the small world registers itself (``ip2p.world:world_model_path``) like any
user's package would.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ip2p.errors import ModelLoadError

ENTRY_POINT_GROUP = "ip2p.sources"
_PREFIX = re.compile(r"^([a-z][a-z0-9_-]*):(?!//)(.+)$")  # 'world:ip2p'; not 'C:\\', not 'https://'
_RESOLVERS: dict[str, Callable[[str], str | Path]] = {}
_entry_points_loaded = False


def register_source_prefix(prefix: str, resolver: Callable[[str], str | Path]) -> None:
    """Make ``<prefix>:<name>`` resolve to ``resolver(name)`` (a folder or file path)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", prefix):
        raise ValueError(f"source prefix must be lower-case letters, digits, '-' or '_', got {prefix!r}")
    _RESOLVERS[prefix] = resolver


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _RESOLVERS.setdefault(ep.name, ep.load())


def split_prefix(source: str) -> tuple[str, str] | None:
    """``("world", "ip2p")`` for ``"world:ip2p"``; None when ``source`` has no registered prefix."""
    m = _PREFIX.match(source)
    if m is None or len(m.group(1)) < 2:  # a one-letter prefix is a Windows drive
        return None
    if m.group(1) not in _RESOLVERS:
        _load_entry_points()
    return (m.group(1), m.group(2)) if m.group(1) in _RESOLVERS else None


def resolve_prefixed(source: str) -> str | None:
    """The path a prefixed name stands for, or None when ``source`` carries no registered prefix."""
    parts = split_prefix(source)
    if parts is None:
        return None
    try:
        return str(_RESOLVERS[parts[0]](parts[1]))
    except ModelLoadError:
        raise
    except Exception as e:  # a resolver's own failure, named
        raise ModelLoadError(f"cannot resolve {source!r}: {type(e).__name__}: {e}") from e


def registered_prefixes() -> list[str]:
    _load_entry_points()
    return sorted(_RESOLVERS)


__all__ = ["register_source_prefix", "resolve_prefixed", "split_prefix", "registered_prefixes", "ENTRY_POINT_GROUP"]
