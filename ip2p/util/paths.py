"""Output paths built from data: the one place a name that came from a dataset, a spec or the user
(item ids, benchmark fields such as PIE-Bench's ``image_path``, task names, spec and method names,
captions) becomes a path under an output folder.

``safe_output_path(root, *parts)`` returns ``root/part/...`` and refuses (``UnsafePathError``,
naming what the name was and why) anything that could leave ``root`` or mean something else on
another system: empty parts, ``.`` and ``..``, absolute paths, NUL and control characters,
backslashes and drive letters (``C:``, Windows' separators), names longer than
``MAX_COMPONENT_BYTES`` bytes, and a path that resolves outside ``root`` through a symbolic link
already there. A ``/`` inside a part separates folders (a benchmark's relative file name);
unicode names are kept as given. ``safe_name(text)`` maps any text to one safe component instead
(unsafe characters replaced, a hash of the original appended when it changed), for names where a
readable stand-in is better than a refusal (spec and method names in default folder names).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ip2p.errors import SpecError

MAX_COMPONENT_BYTES = 200  # below every common file system's 255-byte limit, with room for suffixes
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\/:*?\"<>|]")


class UnsafePathError(SpecError):
    """A name from data that would not stay a plain relative path under its output folder."""


def _component_problem(part: str) -> str | None:
    if part == "":
        return "an empty path component (a leading, doubled or trailing '/')"
    if part in (".", ".."):
        return f"the component {part!r} (it climbs out of or aliases a folder)"
    if "\x00" in part:
        return "a NUL character"
    if _CONTROL.search(part):
        return "a control character"
    if "\\" in part:
        return "a backslash (a Windows path separator)"
    if ":" in part:
        return "a ':' (a Windows drive letter or stream name)"
    if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        return f"a component longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def check_relative_name(name: object, *, what: str = "name") -> list[str]:
    """The folder components of ``name`` (a relative path with '/' separators) when it is safe;
    ``UnsafePathError`` naming ``what`` and the problem otherwise."""
    if not isinstance(name, str):
        raise UnsafePathError(f"{what} {name!r}: not a text name")
    shown = name if len(name) <= 80 else name[:77] + "..."
    if name.startswith("/") or name.startswith("~"):
        raise UnsafePathError(f"{what} {shown!r}: an absolute path; only a relative name may name an output file")
    parts = name.split("/")
    for part in parts:
        why = _component_problem(part)
        if why:
            raise UnsafePathError(f"{what} {shown!r}: holds {why}; it cannot name an output file")
    return parts


def safe_output_path(root: str | os.PathLike, *parts: object, what: str = "name") -> Path:
    """``root`` joined with ``parts`` (each checked by ``check_relative_name``), guaranteed to lie
    inside ``root`` even through symbolic links already on disk; ``UnsafePathError`` otherwise."""
    root = Path(root)
    components: list[str] = []
    for p in parts:
        components += check_relative_name(p, what=what)
    path = root.joinpath(*components)
    base = root.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePathError(f"{what} {'/'.join(components)!r}: resolves to {resolved}, outside {base} "
                              "(a symbolic link on the way); it cannot name an output file")
    return path


def safe_name(text: object, *, max_bytes: int = 80) -> str:
    """One safe path component standing for ``text``: itself when it is already safe and short,
    else its unsafe characters replaced by '_', cut to ``max_bytes`` and a hash of the original
    appended (so two different texts never map to one name)."""
    text = str(text)
    if _component_problem(text) is None and "/" not in text and len(text.encode("utf-8")) <= max_bytes \
            and not text.startswith(("~", " ")) and not text.endswith((" ", ".")):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    clean = _UNSAFE_CHARS.sub("_", text).strip(" .") or "_"
    clean = clean.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    return f"{clean}-{digest}"
