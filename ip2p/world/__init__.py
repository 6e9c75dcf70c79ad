"""The small world's models: shipped weights, the recipes that train them, cards and evaluation.

The generator (scenes, edits, examples, tokenizer) lives below, in ``ip2p.data.world``.

Model names ``world:<name>`` resolve to folders under ``weights/`` here, through the same
loading code as real models: the ``ip2p.sources`` entry point ``world`` registers
``world_model_path`` as the resolver of the ``world:`` prefix.
"""
from __future__ import annotations

from pathlib import Path

from ip2p.data.world.edits import CATEGORIES, WORLD_DYNAMICS  # noqa: E402  (numpy only; cheap)

# the one place that says where the shipped weights live
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SD_DIR = WEIGHTS_DIR / "sd"
TOKENIZER_DIR = SD_DIR / "tokenizer"

# name -> folder under WEIGHTS_DIR
WORLD_MODELS = {
    "sd": "sd",  # diffusers StableDiffusionPipeline folder (vae, text_encoder, tokenizer, unet, scheduler)
    "ip2p": "ip2p",  # diffusers StableDiffusionInstructPix2PixPipeline folder
    "clip": "clip",  # open_clip model for metrics
    "clip-guide": "clip-guide",  # open_clip model used as the Text2Live-style guide
}


def world_model_path(name: str) -> Path:
    """Folder of a shipped world model; a clear error when the name is unknown or not built."""
    from ip2p.errors import ModelLoadError

    if name not in WORLD_MODELS:
        raise ModelLoadError(f"unknown world model 'world:{name}'; known: {', '.join('world:' + n for n in WORLD_MODELS)}")
    path = WEIGHTS_DIR / WORLD_MODELS[name]
    if not path.exists():
        raise ModelLoadError(
            f"world model 'world:{name}' is not built: {path} is missing. "
            f"Build it with its recipe (see ip2p/world/README.md)."
        )
    return path
