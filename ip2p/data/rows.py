"""Shared machinery of the dataset readers: the bad-row policy, deterministic subsets, and the
``EditDataset`` sequence every reader returns.

A bad row (missing file, undecodable image, empty instruction, missing field) is either raised as a
``DataRowError`` naming the row and the field (``on_bad_row="raise"``) or skipped, logged one line
per row and summarised with counts (``on_bad_row="skip"``); it is never dropped silently.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ip2p.data.types import EditExample
from ip2p.errors import DataRowError, ImageReadError

log = logging.getLogger("ip2p.data")

BAD_ROW_POLICIES = ("raise", "skip")


@dataclass(frozen=True)
class BadRow:
    source: str  # file path and row/line number
    field: str  # the field at fault (e.g. "input_image", "instruction")
    problem: str

    def message(self) -> str:
        return f"{self.source}: field {self.field!r}: {self.problem}"


@dataclass
class BadRowLog:
    """Collects bad rows under a policy: ``raise`` raises at the first one, ``skip`` records it."""

    policy: str = "raise"
    rows: list[BadRow] = field(default_factory=list)

    def __post_init__(self):
        if self.policy not in BAD_ROW_POLICIES:
            raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {self.policy!r}")

    def report(self, source: str, field_name: str, problem: str) -> None:
        row = BadRow(source, field_name, problem)
        if self.policy == "raise":
            raise DataRowError(row.message() + " (pass on_bad_row='skip' / --on-bad-row skip to skip such rows)")
        self.rows.append(row)
        log.warning("skipping bad row: %s", row.message())

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.field for r in self.rows).items()))

    def summary(self) -> str:
        if not self.rows:
            return "no bad rows"
        by_field = ", ".join(f"{k}: {v}" for k, v in self.counts().items())
        return f"skipped {len(self.rows)} bad row(s) ({by_field})"


def require_text(row: dict, key: str, source: str, bad: BadRowLog, *, allow_empty: bool = False) -> str | None:
    """``row[key]`` as a string, or None after reporting a missing / non-text / empty field."""
    if key not in row or row[key] is None:
        bad.report(source, key, "missing field")
        return None
    value = row[key]
    if not isinstance(value, str):
        bad.report(source, key, f"expected text, got {type(value).__name__}")
        return None
    if not allow_empty and not value.strip():
        bad.report(source, key, "empty text")
        return None
    return value


def check_image(load: Callable[[], torch.Tensor], source: str, field_name: str, bad: BadRowLog) -> bool:
    """Decode an image once to prove it readable; report it as a bad row when it is not."""
    try:
        x = load()
    except (ImageReadError, DataRowError) as e:
        bad.report(source, field_name, str(e))
        return False
    if not (isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] == 3):
        bad.report(source, field_name, f"expected a [3, H, W] image, got {getattr(x, 'shape', type(x))}")
        return False
    return True


def check_mask(load: Callable[[], torch.Tensor], source: str, field_name: str, bad: BadRowLog) -> bool:
    """Decode a mask once to prove it readable (a bool ``[H, W]`` tensor); report it as a bad row
    when it is not."""
    try:
        m = load()
    except (ImageReadError, DataRowError, ValueError) as e:
        bad.report(source, field_name, str(e))
        return False
    if not (isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.ndim == 2):
        bad.report(source, field_name, f"expected a bool [H, W] mask, got {getattr(m, 'dtype', type(m))} "
                   f"{tuple(getattr(m, 'shape', ()))}")
        return False
    return True


def stable_unit(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on (seed, key): the basis of growth-stable subsets."""
    h = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def parse_subset(subset: int | float | str | None) -> int | float | None:
    """``None``, a count (int >= 0, or "500") or a fraction (0 < f <= 1 as float, "0.1" or "10%")."""
    if subset is None or subset == "":
        return None
    if isinstance(subset, str):
        s = subset.strip()
        if s.endswith("%"):
            return parse_subset(float(s[:-1]) / 100.0)
        return parse_subset(float(s) if any(c in s for c in ".eE") else int(s))
    if isinstance(subset, bool):
        raise ValueError(f"subset must be a count or a fraction, got {subset!r}")
    if isinstance(subset, int):
        if subset < 0:
            raise ValueError(f"subset count must be >= 0, got {subset}")
        return subset
    if isinstance(subset, float):
        if not 0.0 < subset <= 1.0:
            raise ValueError(f"subset fraction must be in (0, 1], got {subset}")
        return subset
    raise ValueError(f"subset must be a count or a fraction, got {subset!r}")


def select_subset(examples: Sequence[EditExample], subset: int | float | str | None, seed: int = 0) -> list[EditExample]:
    """A deterministic subset that is stable under growth of the dataset.

    Every item gets a key ``stable_unit(seed, item_id)``. A fraction ``f`` keeps items with key < f
    (adding rows never changes whether an old row is kept); a count ``k`` keeps the k smallest keys
    (adding rows can only displace old rows by new ones). The kept items stay in dataset order.
    """
    subset = parse_subset(subset)
    if subset is None:
        return list(examples)
    keys = [stable_unit(seed, ex.item_id) for ex in examples]
    if isinstance(subset, float):
        keep = {i for i, k in enumerate(keys) if k < subset}
    else:
        keep = set(sorted(range(len(examples)), key=lambda i: (keys[i], examples[i].item_id))[:subset])
    return [ex for i, ex in enumerate(examples) if i in keep]


class EditDataset(Sequence[EditExample]):
    """The rows of one dataset split after checks, filtering and subsetting.

    Indexable and iterable; images stay lazy (``example.load_input()``). ``bad_rows`` holds what
    was skipped; ``describe()`` says what was read.
    """

    def __init__(self, examples: Iterable[EditExample], *, name: str, split: str | None, bad_rows: BadRowLog,
                 info: dict | None = None):
        self.examples = list(examples)
        self.name = name
        self.split = split
        self.bad_rows = bad_rows
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def __iter__(self) -> Iterator[EditExample]:
        return iter(self.examples)

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.info.items())
        return f"{self.name} [{self.split}]: {len(self)} examples{extra}; {self.bad_rows.summary()}"

    def __repr__(self) -> str:
        return f"EditDataset({self.describe()})"
