"""Judge answers on disk, keyed by content: the judge's identity, the sampling settings, the prompt
text and the exact pixels of every image shown. Each answer is committed as it arrives, so a rerun
or a sweep resumed after a crash asks nothing it has an answer for (outcomes that are failures are
kept too, with their reason; ``retry_failed`` asks those again)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence


def answer_key(judge: dict[str, Any], sampling: dict[str, Any], prompt: str, image_hashes: Sequence[str]) -> str:
    """The cache key of one query (sha256 hex)."""
    doc = json.dumps({"judge": judge, "sampling": sampling, "prompt": prompt, "images": list(image_hashes)},
                     sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


class AnswerCache:
    """A SQLite file of ``key -> answer record`` (a JSON object); ``path=None`` keeps it in memory."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if self.path is None else str(self.path), timeout=60,
                                   check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL" if self.path is not None else "PRAGMA journal_mode=MEMORY")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
            self._db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers (key, record) VALUES (?, ?)",
                             (key, json.dumps(record, sort_keys=True, default=str)))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["AnswerCache", "answer_key"]
