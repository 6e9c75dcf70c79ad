"""Reading the text files a user hands us (specs, manifests, goldens): UTF-8 or a one-line error
naming the file and the byte, and YAML whose mappings hold each key once (a duplicate key is
refused naming it and both lines, never "the last one wins")."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def read_text(path: str | os.PathLike, error: type[Exception], *, what: str = "file") -> str:
    """The UTF-8 text of ``path``; ``error`` naming the file (and the offending byte) when it is not
    UTF-8 or cannot be read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise error(f"{what} {p}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                    "save it as UTF-8") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding one key twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' keys may be overridden: YAML's rule
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader's own error follows
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first + 1}); give each key once",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | os.PathLike, error: type[Exception], *, what: str = "file") -> Any:
    """The YAML document in ``path`` (UTF-8, each mapping key once); ``error`` naming the file, the
    line and the problem otherwise."""
    text = read_text(path, error, what=what)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(f"{what} {path}: not valid YAML: {where}{' '.join(str(problem).split())}") from None
