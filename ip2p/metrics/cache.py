"""Embedding cache keyed by content: (model identity with weights hash, preprocessing, image bytes or
text) -> L2-normalised float32 feature. In memory, optionally backed by one SQLite file in WAL mode
that several processes may read and write at once.

Keys are built by the encoder (see :func:`embedding_key`); the cache only stores vectors. A value is
written once and never changes (``INSERT OR IGNORE``): equal keys mean equal inputs, so concurrent
writers of the same key write the same vector and the first one wins. Use a local disk; SQLite
locking on network file systems is unreliable.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from ip2p.util.hashing import hash_bytes

DB_NAME = "clip_embeddings.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, vec BLOB NOT NULL)"
_CHUNK = 500  # keys per SELECT (SQLite's parameter limit is 999 on old builds)


def embedding_key(namespace: str, kind: str, content: str) -> str:
    """Key of one embedding: ``namespace`` (model identity and preprocessing, as a string), ``kind``
    (``"image"`` or ``"text"``) and ``content`` (a tensor hash or the text itself)."""
    return hash_bytes(b"\0".join(s.encode("utf-8") for s in (namespace, kind, content)), length=40)


class EmbeddingCache:
    """Content-keyed store of embeddings: ``get_many(keys)`` and ``put_many({key: vector})``.

    ``path=None`` keeps everything in memory (lost with the object). With a path (a ``.sqlite``
    / ``.db`` file, or a folder that gets ``clip_embeddings.sqlite``), entries persist and are shared
    between processes; an in-memory layer in front avoids re-reading. Each process opens its own
    connection lazily, so the object can be passed to worker processes.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout_s: float = 120.0):
        self.path: Path | None = None
        if path is not None:
            p = Path(path)
            self.path = p if p.suffix in (".sqlite", ".db", ".sqlite3") else p / DB_NAME
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._memory: dict[str, torch.Tensor] = {}
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self.hits = 0
        self.misses = 0
        self.writes = 0
        if self.path is not None:
            self._db()  # create the file and table now, so errors surface at construction

    # -- connection (one per process) --------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._conn_pid != os.getpid():
            conn = sqlite3.connect(str(self.path), timeout=self.timeout_s, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
            self._retry(lambda: conn.execute(_SCHEMA))
            self._conn, self._conn_pid = conn, os.getpid()
        return self._conn

    def _retry(self, fn):
        """Run ``fn``, retrying while another process holds a lock SQLite did not wait out."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_conn"], state["_conn_pid"] = None, None
        return state

    def close(self) -> None:
        if self._conn is not None and self._conn_pid == os.getpid():
            self._conn.close()
        self._conn = None

    # -- read / write ------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The stored vectors (float32, CPU) of those ``keys`` that are present."""
        keys = list(dict.fromkeys(keys))
        found = {k: self._memory[k] for k in keys if k in self._memory}
        missing = [k for k in keys if k not in found]
        if missing and self.path is not None:
            db = self._db()
            for i in range(0, len(missing), _CHUNK):
                chunk = missing[i : i + _CHUNK]
                q = f"SELECT key, dim, vec FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})"
                for key, dim, blob in self._retry(lambda: db.execute(q, chunk).fetchall()):
                    vec = torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())
                    if vec.numel() != dim:
                        raise ValueError(f"embedding cache {self.path}: entry {key} is corrupt ({vec.numel()} != {dim} values)")
                    self._memory[key] = vec
                    found[key] = vec
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def put_many(self, items: Mapping[str, torch.Tensor]) -> None:
        """Store ``{key: 1-D vector}``; a key already present keeps its first value."""
        rows = []
        for key, vec in items.items():
            v = vec.detach().to("cpu", torch.float32).contiguous().view(-1)
            if key not in self._memory:
                self._memory[key] = v
            rows.append((key, int(v.numel()), v.numpy().tobytes()))
        if rows and self.path is not None:
            db = self._db()

            def write():
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("INSERT OR IGNORE INTO embeddings (key, dim, vec) VALUES (?, ?, ?)", rows)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise

            self._retry(write)
        self.writes += len(rows)

    def __len__(self) -> int:
        if self.path is None:
            return len(self._memory)
        return int(self._retry(lambda: self._db().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]))

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return f"EmbeddingCache({where}, hits={self.hits}, misses={self.misses}, writes={self.writes})"
