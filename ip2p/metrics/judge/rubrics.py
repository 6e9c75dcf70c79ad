"""Judge rubrics as their projects publish them: the prompt of each query, which images it shows,
how its answer is parsed and how the parts combine into columns.

The prompt texts are data (``published/<name>.json``, each naming the file and commit it was taken
from); this module only assembles queries and reads answers. A part whose answer cannot be read is
``None`` (missing), never a guess and never 0; a column that needs it is NaN.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ip2p.errors import SpecError

RUBRIC_DIR = Path(__file__).resolve().parent / "published"
RUBRICS = ("viescore", "gedit", "imgedit")
_DELIMITER = "||V^=^V||"


@dataclass(frozen=True)
class Query:
    """One question to a judge: ``part`` of ``rubric``, its full prompt text and the images it shows
    (names: ``input`` / ``output``), in order after the text."""

    rubric: str
    part: str
    prompt: str
    images: tuple[str, ...]

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def load_rubric(name: str) -> dict[str, Any]:
    """The rubric's definition (prompts, sources, parsing notes); SpecError naming it if unknown."""
    if name not in RUBRICS:
        raise SpecError(f"unknown judge rubric {name!r}; known: {list(RUBRICS)}")
    return json.loads((RUBRIC_DIR / f"{name}.json").read_text(encoding="utf-8"))


def columns(name: str) -> list[str]:
    """The metric columns a rubric gives: ``<rubric>_<column>``."""
    return [f"{name}_{c}" for c in load_rubric(name)["columns"]]


def queries(name: str, instruction: str, category: str | None = None) -> list[Query]:
    """The queries of one edit under rubric ``name``."""
    r = load_rubric(name)
    out = []
    for part, p in r["parts"].items():
        if "prompts_by_edit_type" in p:
            kind = r["category_to_edit_type"].get(category or "", r["default_edit_type"])
            text = p["prompts_by_edit_type"][kind]
        else:
            text = p["prompt"]
        if p.get("placeholder"):
            text = text.replace(p["placeholder"], instruction)
        out.append(Query(name, part, text, tuple(p["images"])))
    return out


def _json_scores(text: str) -> list[float] | None:
    """The 'score' list of a VIEScore-style answer, or None."""
    if text.count(_DELIMITER) == 2:
        body = text[text.find(_DELIMITER) + len(_DELIMITER): text.rfind(_DELIMITER)]
    elif "{" in text and "}" in text:
        body = text[text.find("{"): text.rfind("}") + 1]
    else:
        body = text.strip()
        m = re.fullmatch(r"\[\s*(\d+)\s*(?:,\s*(\d+)\s*)*\]", body)
        if m:
            return [float(v) for v in re.findall(r"\d+", body)]
        return [float(body)] if re.fullmatch(r"\d+", body) else None
    try:
        data = json.loads(body.replace("\n", " "))
    except json.JSONDecodeError:
        return None
    score = data.get("score") if isinstance(data, dict) else None
    score = score if isinstance(score, list) else [score]
    if not score or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in score):
        return None
    return [float(s) for s in score]


def _line_scores(text: str, lo: int, hi: int) -> list[float]:
    """Integers ``lo..hi`` of ``Name: N`` lines, in order (ImgEdit's answer format)."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"\s*[^:]+:\s*(\d+)\s*\.?\s*", line)
        if m and lo <= int(m.group(1)) <= hi:
            out.append(float(m.group(1)))
    return out


def parse(name: str, part: str, text: str) -> list[float] | None:
    """The scores an answer gives, or None when it cannot be read (missing: ``unparseable``)."""
    lo, hi = load_rubric(name)["range"]
    if name == "imgedit":
        s = _line_scores(text, lo, hi)
        return s[:3] if len(s) >= 3 else None
    s = _json_scores(text)
    if s is None or not all(lo <= v <= hi for v in s):
        return None
    return s


_REFUSAL = re.compile(r"\b(I'?m sorry|I am sorry|I can(?:no|')t (?:help|assist|evaluate|comply|provide)|I(?: am|'m) unable to|"
                      r"I won'?t be able to)\b", re.IGNORECASE)


def looks_like_refusal(text: str | None) -> bool:
    """An answer without scores that reads as a refusal in plain words (counted ``refused``, not
    ``unparseable``)."""
    return bool(text) and _REFUSAL.search(text) is not None


def combine(name: str, parts: dict[str, list[float] | None]) -> dict[str, float]:
    """Columns of one edit from its parts' parsed scores (None = missing -> NaN)."""
    nan = math.nan
    if name == "imgedit":
        s = parts.get("judge")
        if s is None:
            return {f"{name}_{c}": nan for c in ("adherence", "quality", "detail", "overall")}
        return {f"{name}_adherence": s[0], f"{name}_quality": s[1], f"{name}_detail": s[2],
                f"{name}_overall": sum(s) / 3}
    sc = min(parts["sc"]) if parts.get("sc") else nan
    pq = min(parts["pq"]) if parts.get("pq") else nan
    return {f"{name}_sc": sc, f"{name}_pq": pq, f"{name}_o": math.sqrt(sc * pq) if sc == sc and pq == pq else nan}


__all__ = ["RUBRICS", "Query", "load_rubric", "columns", "queries", "parse", "combine", "looks_like_refusal"]
