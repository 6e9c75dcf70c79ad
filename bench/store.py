"""The result store of one run folder: content-addressed images, atomic parquet shards, manifest.

Layout of ``<run>/``:

    spec.yaml          the validated spec (as run)
    manifest.json      spec, fingerprint, package versions, git commit, hardware, invocations
    images/ab/<sha>.png  edited, input and target images, named by the hash of their PNG bytes
    shards/r<rank>-<n>-<nonce>.parquet   result rows; each file appears whole or not at all

A row's ``unit_key`` names its work unit; the loader merges every shard and drops duplicate
keys (a unit can only be stored twice if two runs raced on one folder; the rows are equal).
"""
from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from ip2p.util.hashing import hash_bytes
from ip2p.util.io import atomic_write_bytes, png_bytes

SHARD_DIR = "shards"
IMAGE_DIR = "images"


class RunStore:
    """Reads and writes one run folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def shards_dir(self) -> Path:
        return self.root / SHARD_DIR

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def save_png(self, image: torch.Tensor) -> str:
        """Store ``[3,H,W]`` in [0,1] as PNG under its content hash; return the path relative to
        the run folder. Writing the same image twice is a no-op."""
        data = png_bytes(image)
        return self.save_png_bytes(data)

    def save_png_bytes(self, data: bytes) -> str:
        h = hash_bytes(data, length=32)
        rel = f"{IMAGE_DIR}/{h[:2]}/{h}.png"
        path = self.root / rel
        if not path.exists():
            atomic_write_bytes(path, data)
        return rel

    def shard_files(self) -> list[Path]:
        if not self.shards_dir.exists():
            return []
        # temporary files start with "." (ip2p.util.io.atomic_write_bytes) and are never read
        return sorted(p for p in self.shards_dir.glob("*.parquet") if not p.name.startswith("."))

    def write_shard(self, rows: list[dict], rank: int, seq: int) -> Path:
        """Write ``rows`` as one parquet shard atomically (temporary name, fsync, rename)."""
        df = pd.DataFrame(rows)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        name = f"r{rank:03d}-{seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        return atomic_write_bytes(self.shards_dir / name, buf.getvalue())

    def done_keys(self) -> set[str]:
        keys: set[str] = set()
        for p in self.shard_files():
            keys.update(pd.read_parquet(p, columns=["unit_key"])["unit_key"].tolist())
        return keys

    def model_hashes(self) -> dict[str, set[str]]:
        """Method key -> the model hashes its stored rows were made with."""
        out: dict[str, set[str]] = {}
        for p in self.shard_files():
            df = pd.read_parquet(p, columns=["method", "model_hash"])
            for method, h in zip(df["method"], df["model_hash"].astype(str)):
                out.setdefault(method, set()).add(h)
        return out

    def load(self) -> pd.DataFrame:
        return load_results(self.root)


_ORDER = ["method_index", "item_index", "seed", "setting_index"]


def load_results(run: str | os.PathLike, shard_files: Iterable[Path] | None = None) -> pd.DataFrame:
    """All result rows of a run, one per work unit, in a stable order (method, item, seed,
    setting). Duplicate unit keys (from racing runs) are dropped keeping the first shard's row."""
    store = RunStore(run)
    files = list(shard_files) if shard_files is not None else store.shard_files()
    if not files:
        return pd.DataFrame()
    frames = [pd.read_parquet(p) for p in files]
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(subset="unit_key", keep="first")
    order = [c for c in _ORDER if c in df.columns]
    if order:
        df = df.sort_values(order + ["unit_key"], kind="stable")
    return df.reset_index(drop=True)
