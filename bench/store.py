"""The result store of one run folder: content-addressed images, atomic parquet shards, manifest.

Layout of ``<run>/``:

    spec.yaml          the validated spec (as run)
    spec.json          its fingerprint (what rows depend on) and the spec
    manifest.json      spec, fingerprint, package versions, git commit, hardware, invocations
    units.json         the unit keys of the newest invocation's spec ("N of M units done")
    images/ab/<sha>.png  edited, input and target images, named by the hash of their PNG bytes
    shards/r<rank>-<n>-<nonce>.parquet   result rows; each file appears whole or not at all
    .lock, .active     lock files (below)

A row's ``unit_key`` names its work unit; the loader merges every shard and drops duplicate
keys (a unit can only be stored twice if two runs raced on one folder; the rows are equal).

Stored images are verified, not trusted: an image's name is the sha256 of its bytes (the row
holds the name), so ``verify_images`` finds a truncated or altered file by hashing it.

Locking (POSIX ``flock``, also over NFS on Linux): ``.lock`` is a short exclusive mutex held
while a process checks the folder's spec, registers itself, edits shards or the manifest;
``.active`` is held shared by every process running a sweep into the folder for its whole run.
A process holding the mutex can tell whether any sweep is running (``others_active``): that is
how a sweep of a different spec is refused while another is running, how a folder whose earlier
sweep died before writing a row is taken over, and how ``run_state`` tells "running" from
"interrupted".
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking (documented)
    fcntl = None

import pandas as pd
import torch

from ip2p.util.hashing import hash_bytes
from ip2p.util.hashing import hash_file
from ip2p.util.io import atomic_write_bytes, png_bytes, read_json_or

SHARD_DIR = "shards"
IMAGE_DIR = "images"
QUARANTINE_DIR = "quarantine"  # damaged or stray files moved out of the way by a sweep (never deleted)
SHARD_NAME = re.compile(r"^r\d{3,}-\d{6,}-[0-9a-f]{8}\.parquet$")  # what write_shard names a shard

# (path, size, mtime) -> the problem of that file as a shard (None: a good shard); files never change
# in place (atomic renames), so a file's verdict holds while its size and mtime do
_SHARD_VERDICTS: dict[tuple[str, int, int], str | None] = {}


def shard_problem(p: Path) -> str | None:
    """Why ``p`` is not a readable result shard, or None: a name ``write_shard`` does not write, not a
    file, not a parquet file (truncated, corrupt), or a parquet file without a ``unit_key`` column."""
    if not SHARD_NAME.match(p.name):
        return "a stray file (not a shard's name r<rank>-<seq>-<nonce>.parquet)"
    try:
        st = p.stat()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "not a file"
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHARD_VERDICTS:
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(p).names
            _SHARD_VERDICTS[key] = None if "unit_key" in names else "a parquet file without a unit_key column"
        except Exception as e:  # pyarrow's ArrowInvalid and friends: truncated or not parquet at all
            _SHARD_VERDICTS[key] = f"not a readable parquet file (truncated or corrupt: {str(e).splitlines()[0][:120]})"
    return _SHARD_VERDICTS[key]


def _has_columns(p: Path, columns: list[str]) -> bool:
    import pyarrow.parquet as pq

    try:
        return set(columns) <= set(pq.read_schema(p).names)
    except Exception:  # an unreadable footer: the file is damaged, whatever it holds
        return True


def _read_shard(p: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A shard's rows, or None (the file recorded as bad) when its body turns out unreadable."""
    try:
        return pd.read_parquet(p, columns=columns)
    except Exception as e:  # a corrupt body behind an intact footer
        if columns is not None and not _has_columns(p, columns):
            raise  # a shard of another layout lacking a column asked for: not damage
        try:
            st = p.stat()
            _SHARD_VERDICTS[(str(p), st.st_size, st.st_mtime_ns)] = f"not a readable parquet file ({str(e)[:120]})"
        except OSError:
            pass
        return None


class RunStore:
    """Reads and writes one run folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.quarantined: dict[Path, str] = {}  # what quarantine_bad_shards moved aside

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
        """Store PNG bytes under their content hash. An existing file is kept only when it holds
        exactly these bytes (a truncated or corrupt one is replaced)."""
        h = hash_bytes(data, length=32)
        rel = f"{IMAGE_DIR}/{h[:2]}/{h}.png"
        path = self.root / rel
        try:
            intact = path.stat().st_size == len(data) and path.read_bytes() == data
        except OSError:
            intact = False
        if not intact:
            atomic_write_bytes(path, data)
        return rel

    def _shard_entries(self) -> list[Path]:
        """Every entry of ``shards/`` except temporary files (they start with ".", see
        ``ip2p.util.io.atomic_write_bytes``, and are never read)."""
        try:
            return sorted(p for p in self.shards_dir.iterdir() if not p.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def shard_files(self) -> list[Path]:
        """The result shards that can be read (``shard_problem`` finds none); see ``bad_shards``."""
        return [p for p in self._shard_entries() if shard_problem(p) is None]

    def bad_shards(self) -> dict[Path, str]:
        """``{path: problem}`` of entries of ``shards/`` that are not readable result shards: a
        truncated or corrupt file, a stray file, a folder. Readers skip them (and say so)."""
        out = {}
        for p in self._shard_entries():
            why = shard_problem(p)
            if why is not None:
                out[p] = why
        return out

    def quarantine_bad_shards(self) -> dict[Path, str]:
        """Move every bad entry of ``shards/`` to ``quarantine/shards/`` (nothing is deleted); the units
        of a damaged shard are then missing and the sweep runs them again. Returns the entries moved
        with their problems. Call it holding ``mutex`` with no other sweep running."""
        bad = self.bad_shards()
        if not bad:
            return {}
        dest_dir = self.root / QUARANTINE_DIR / SHARD_DIR
        dest_dir.mkdir(parents=True, exist_ok=True)
        for p in bad:
            dest, n = dest_dir / p.name, 1
            while dest.exists():
                dest, n = dest_dir / f"{p.name}.{n}", n + 1
            os.replace(p, dest)
        self.quarantined.update(bad)
        return bad

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
            df = _read_shard(p, columns=["unit_key"])
            if df is not None:
                keys.update(df["unit_key"].tolist())
        return keys

    def model_hashes(self) -> dict[str, set[str]]:
        """Method key -> the model hashes its stored rows were made with."""
        out: dict[str, set[str]] = {}
        for p in self.shard_files():
            df = _read_shard(p, columns=["method", "model_hash"])
            if df is None:
                continue
            for method, h in zip(df["method"], df["model_hash"].astype(str)):
                out.setdefault(method, set()).add(h)
        return out

    def load(self) -> pd.DataFrame:
        return load_results(self.root)

    # ---- locks ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def mutex(self) -> Iterator[None]:
        """The folder's short exclusive lock (spec check, registration, shard and manifest edits)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def others_active(self) -> bool:
        """Whether some process holds ``.active`` (a sweep running into this folder). Call it while
        holding ``mutex`` and before taking ``.active`` yourself."""
        path = self.root / ".active"
        if fcntl is None or not path.exists():
            return False
        with open(path, "rb") as f:  # read-only suffices for flock (and works in a read-only folder)
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return False

    def hold_active(self):
        """Take ``.active`` shared (call while holding ``mutex``); returns the open file to close
        (which releases it) when the sweep ends."""
        f = open(self.root / ".active", "a+b")
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        return f

    def is_active(self) -> bool:
        """Whether a sweep is running into this folder now. A read-only probe without the mutex,
        so that readers (aggregate, report) work on a folder they cannot write."""
        try:
            return self.root.is_dir() and self.others_active()
        except OSError:
            return False

    # ---- verification and repair ---------------------------------------------------------
    def verify_images(self, rels: Iterable[str]) -> dict[str, str]:
        """``{relative path: problem}`` of stored images that are missing or whose bytes do not
        hash to their name (truncated, corrupt, altered)."""
        bad = {}
        for rel in sorted(set(r for r in rels if isinstance(r, str))):
            path = self.root / rel
            if not path.is_file():
                bad[rel] = "file is missing"
                continue
            expected = Path(rel).stem
            got = hash_file(path, length=len(expected))
            if got != expected:
                bad[rel] = f"content hash {got} does not match its name (truncated or corrupt file)"
        return bad

    def drop_rows(self, unit_keys: Iterable[str], *, keep_shards: Iterable[Path] = ()) -> int:
        """Remove the rows of ``unit_keys`` from every shard except ``keep_shards`` (each shard is
        rewritten atomically, or deleted when it empties); returns the number of rows removed.
        Hold ``mutex`` while calling it."""
        keys = set(unit_keys)
        keep = {Path(p).name for p in keep_shards}
        removed = 0
        for p in self.shard_files():
            if p.name in keep or not keys:
                continue
            df = _read_shard(p)
            if df is None:
                continue
            drop = df["unit_key"].isin(keys)
            if not drop.any():
                continue
            removed += int(drop.sum())
            rest = df[~drop]
            if rest.empty:
                p.unlink()
            else:
                buf = io.BytesIO()
                rest.to_parquet(buf, index=False)
                atomic_write_bytes(p, buf.getvalue())
        return removed


def bad_stored_images(run: str | os.PathLike, df: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``df`` whose stored output, input or target image is missing or corrupt, with
    columns ``file`` and ``problem`` (one row per bad file and result row)."""
    store = RunStore(run)
    cols = [c for c in ("output_image", "input_image", "target_image") if c in df.columns]
    bad = store.verify_images(v for c in cols for v in df[c].dropna())
    out = []
    if bad:
        for c in cols:
            hit = df[df[c].isin(list(bad))]
            for _, r in hit.iterrows():
                out.append({"unit_key": r["unit_key"], "method": r.get("method"), "item_id": r.get("item_id"),
                            "column": c, "file": r[c], "problem": bad[r[c]]})
    return pd.DataFrame(out, columns=["unit_key", "method", "item_id", "column", "file", "problem"])


def describe_bad_images(run: str | os.PathLike, bad: pd.DataFrame, limit: int = 3) -> str:
    """One line naming the bad stored files (the first ``limit``) and the fix."""
    files = list(dict.fromkeys(bad["file"]))
    shown = "; ".join(f"{Path(run) / f} ({bad[bad['file'] == f]['problem'].iloc[0]})" for f in files[:limit])
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return (f"{len(files)} stored image file(s) missing or corrupt: {shown}{more}; "
            f"rerun `ip2p sweep <spec> --out {run}` to regenerate them")


# ---- state of a run ----------------------------------------------------------------------

@dataclass
class RunState:
    """How far a run is: ``state`` is complete, incomplete, running or interrupted (the newest
    invocation died without finishing); ``done`` of ``total`` units of the newest spec are stored."""

    state: str
    done: int
    total: int | None
    rows: int

    @property
    def partial(self) -> bool:
        return self.total is not None and self.done < self.total

    def line(self) -> str:
        if self.total is None:
            return f"{self.rows} rows stored; state {self.state}"
        return f"{self.done} of {self.total} units done ({self.state})"


def run_state(run: str | os.PathLike, df: pd.DataFrame | None = None) -> RunState:
    """The state of the newest invocation of ``run`` and its progress, from the manifest, the
    unit list of the newest spec and whether a sweep holds the folder now."""
    run = Path(run)
    store = RunStore(run)
    df = load_results(run) if df is None else df
    stored = set(df["unit_key"]) if len(df) else set()
    man = read_json_or(store.manifest_path, {})
    keys = read_json_or(run / UNITS_FILE, {}).get("keys")
    if not isinstance(keys, list):
        keys = None
    status = man.get("status") if isinstance(man.get("status"), dict) else {}
    total = len(keys) if keys is not None else status.get("units_total")
    done = len(stored & set(map(str, keys))) if keys is not None else len(stored)
    invocations = man.get("invocations") if isinstance(man.get("invocations"), list) else []
    newest = invocations[-1] if invocations and isinstance(invocations[-1], dict) else {}
    if newest and not newest.get("finished"):
        state = "running" if store.is_active() else "interrupted"
    else:
        state = str(status.get("state", "unknown"))
        if total is not None and state in ("complete", "incomplete"):
            state = "complete" if done >= total else "incomplete"
    return RunState(state=state, done=done, total=total, rows=len(df))


UNITS_FILE = "units.json"


def current_rows(run: str | os.PathLike, df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of the newest spec's units (``units.json``) and how many stored rows were left out.
    A folder keeps the rows of units a later spec dropped (a smaller ``dataset.limit``, a shorter
    grid or seed list); aggregates, tables and reports are of the spec as it is now, and say how
    many rows they left out. Without a unit list (an old folder) every row counts."""
    keys = read_json_or(Path(run) / UNITS_FILE, {}).get("keys")
    if not isinstance(keys, list) or df.empty or "unit_key" not in df:
        return df, 0
    keep = df["unit_key"].isin(set(map(str, keys)))
    return df[keep].reset_index(drop=True), int((~keep).sum())


_ORDER = ["method_index", "item_index", "seed", "setting_index"]


def load_results(run: str | os.PathLike, shard_files: Iterable[Path] | None = None) -> pd.DataFrame:
    """All result rows of a run, one per work unit, in a stable order (method, item, seed,
    setting). Duplicate unit keys (from racing runs) are dropped keeping the first shard's row."""
    store = RunStore(run)
    files = list(shard_files) if shard_files is not None else store.shard_files()
    if not files:
        return pd.DataFrame()
    frames = [f for f in (_read_shard(p) for p in files) if f is not None]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(subset="unit_key", keep="first")
    order = [c for c in _ORDER if c in df.columns]
    if order:
        df = df.sort_values(order + ["unit_key"], kind="stable")
    return df.reset_index(drop=True)
