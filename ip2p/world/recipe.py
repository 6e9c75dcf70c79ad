"""Shared pieces of the world's training recipes: fixed seeds, thread count, data batches, run records.

Every recipe is a pure function of its arguments (seeds fixed), prints progress with tqdm, and
records how it ran (command, steps, batch, wall time, hardware) in ``training.json`` beside the
weights, from which ``ip2p world cards`` writes the model cards.
"""
from __future__ import annotations

import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from ip2p.util.io import atomic_write_bytes, atomic_write_json
from ip2p.data.world.examples import caption_scene, scene_seed, to_tensor
from ip2p.data.world.scenes import N_CAPTION_PHRASINGS, caption, render

from ip2p.world import SD_DIR, TOKENIZER_DIR, WEIGHTS_DIR  # noqa: F401  (recipes import them from here too)


def setup(seed: int, threads: int | None = None) -> torch.Generator:
    """Fix every seed, cap CPU threads (2, or $IP2P_WORLD_THREADS); return a generator for the recipe's draws.

    On a shared CPU run recipes with ``OMP_WAIT_POLICY=PASSIVE``: busy-waiting OpenMP threads
    slow a contended 2-core machine down by an order of magnitude.
    """
    torch.set_num_threads(threads or int(os.environ.get("IP2P_WORLD_THREADS", "2")))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_device(device: str) -> str:
    """``device`` when a recipe can train there ("cpu", or "cuda"/"cuda:<k>" with that GPU visible);
    a clear error otherwise (no silent fall-back to the CPU)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"device {device!r}: the world's recipes train on 'cpu' or 'cuda'")
    if not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: no such CUDA device is visible (torch.cuda.device_count() = "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    return str(dev)


def hardware(device: str | torch.device = "cpu") -> str:
    """Where a recipe ran: the CPU threads, or the GPU's name when ``device`` is a CUDA device."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{torch.get_num_threads()} CPU threads ({os.cpu_count()} cores visible, {cpu}), torch {torch.__version__}"


def caption_batch(split: str, start: int, n: int, seed: int = 0, rng: np.random.Generator | None = None):
    """Images ``[n, 3, 64, 64]`` in [0, 1] and captions of caption items ``start..start+n``.

    With ``rng`` the caption phrasing is drawn at random (augmentation); otherwise it is the
    item's own fixed phrasing.
    """
    imgs, caps = [], []
    for i in range(start, start + n):
        scene = caption_scene(split, i, seed)
        if rng is None:
            p = int(np.random.default_rng(scene_seed(split, i, seed, "captions") + 7).integers(N_CAPTION_PHRASINGS))
        else:
            p = int(rng.integers(N_CAPTION_PHRASINGS))
        imgs.append(to_tensor(render(scene)))
        caps.append(caption(scene, p))
    return torch.stack(imgs), caps


class RunRecord:
    """Times a recipe and writes what it did to ``training.json`` in the model folder."""

    def __init__(self, command: str, device: str | torch.device = "cpu", **config):
        self.command = command
        self.device = device
        self.config = config
        self.t0 = time.time()

    def save(self, folder: str | Path, **results) -> dict:
        rec = {
            "command": self.command,
            "config": self.config,
            "wall_time_s": round(time.time() - self.t0, 1),
            "hardware": hardware(self.device),
            **results,
        }
        atomic_write_json(Path(folder) / "training.json", rec)
        return rec


def load_record(folder: str | Path) -> dict:
    p = Path(folder) / "training.json"
    return json.loads(p.read_text()) if p.exists() else {}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def latest_checkpoint(run_dir: str | Path) -> dict | None:
    """The newest ``checkpoint-<step>.pt`` of a recipe's run folder, loaded; None when there is none."""
    cks = _checkpoints(Path(run_dir))
    return torch.load(cks[-1], map_location="cpu", weights_only=False) if cks else None


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> None:
    """Write ``state`` (plus the step and torch's global RNG state) as ``checkpoint-<step>.pt``,
    atomically, and keep only the newest ``keep`` checkpoints."""
    import io

    buf = io.BytesIO()
    torch.save({"step": step, "torch_rng": torch.get_rng_state(), **state}, buf)
    atomic_write_bytes(Path(run_dir) / f"checkpoint-{step}.pt", buf.getvalue())
    for old in _checkpoints(Path(run_dir))[:-keep]:
        old.unlink()
