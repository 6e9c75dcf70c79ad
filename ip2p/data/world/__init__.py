"""The small world's generator: scenes, edits, examples and the tokenizer's vocabulary.

This is data, below the models: pure numpy/torch code that draws 64x64 scenes pixel-exactly, makes
edit triplets with exact targets and masks in twelve categories, serves them per split, and builds
the world's BPE tokenizer files. The trained models and the recipes that train them live above,
in ``ip2p.world``; nothing here imports them. ``reader`` registers the ``world:<split>`` dataset
kind with ``ip2p.data.registry``.
"""
from __future__ import annotations

from ip2p.data.world.edits import CATEGORIES, WORLD_DYNAMICS

__all__ = ["CATEGORIES", "WORLD_DYNAMICS"]
