"""Training checkpoints on disk: where they live, which are complete, which one a run resumes from.
Read by the trainer and by the configuration check (a resume past ``--steps`` is refused)."""
from __future__ import annotations

import json
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(out: str | Path) -> list[Path]:
    """Complete checkpoints (those with a trainer state), oldest first."""
    root = Path(out) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(dirs, key=lambda p: json.loads((p / STATE_FILE).read_text())["step"])


def find_resume(cfg) -> Path | None:
    """The checkpoint a training configuration resumes from (``resume``: 'latest' or a folder), or None."""
    from ip2p.errors import SpecError

    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        dirs = checkpoint_dirs(cfg.out)
        return dirs[-1] if dirs else None  # nothing yet: start from scratch
    p = Path(cfg.resume)
    if not (p / STATE_FILE).is_file():
        raise SpecError(f"resume={cfg.resume!r}: not a checkpoint folder (no {STATE_FILE} in it)")
    return p
