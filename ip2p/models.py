"""Loading editor components: diffusers folders and hub ids, original single-file checkpoints,
and built-in architectures by name (`sd15`, `tiny`) with random weights; `world:<name>` names
resolve to the shipped small-world folders through the same code paths as real models."""
from __future__ import annotations

from pathlib import Path

from ip2p.errors import ModelLoadError


def resolve_source(source: str | Path) -> str:
    """Map a model name to what diffusers / open_clip loaders take.

    ``world:<name>`` -> the shipped folder; an existing path -> that path (as str);
    anything else is returned unchanged (a hub id, or a built-in architecture name).
    """
    s = str(source)
    if s.startswith("world:"):
        from ip2p.world import world_model_path

        return str(world_model_path(s.split(":", 1)[1]))
    return s


__all__ = ["resolve_source", "ModelLoadError"]
