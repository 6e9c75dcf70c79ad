"""Functions over 60 lines in the project's source (tests excluded), found with ``ast``.

The project's rule is "no function over 60 lines (outside tests)". A function's length is its
source span, ``end_lineno - lineno + 1`` of the ``def`` (decorators excluded, docstring included);
nested functions count inside their parent and on their own. ``EXCEPTIONS`` names the functions
allowed to stay longer, each with the reason it reads better whole (or the issue that splits it).

    python scripts/long_functions.py            # lists every long function not in EXCEPTIONS; exit 1 if any
    python scripts/long_functions.py --all      # lists every long function, exceptions included
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60
ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("ip2p", "baselines", "bench", "scripts")
SKIP_PARTS = {"tests", "__pycache__", ".venv"}

# "path::qualified.name" -> why it may stay over the limit
EXCEPTIONS: dict[str, str] = {}


def source_files(root: Path = ROOT) -> list[Path]:
    """Python files of the source tree (``SOURCE_DIRS``), tests and test helpers (``test_*.py``,
    ``conftest.py``) left out."""
    out = []
    for d in SOURCE_DIRS:
        for p in sorted((root / d).rglob("*.py")):
            rel = p.relative_to(root)
            if SKIP_PARTS & set(rel.parts) or p.name.startswith("test_") or p.name == "conftest.py":
                continue
            out.append(p)
    return out


def function_lengths(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """``("path::qualified.name", lines)`` of every function and method in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).as_posix()
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((f"{rel}::{name}", child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def long_functions(root: Path = ROOT, limit: int = LIMIT) -> dict[str, int]:
    """Every function over ``limit`` lines in the source tree: ``{"path::name": lines}``."""
    return {name: n for p in source_files(root) for name, n in function_lengths(p, root) if n > limit}


def main(argv: list[str]) -> int:
    found = long_functions()
    shown = found if "--all" in argv else {k: v for k, v in found.items() if k not in EXCEPTIONS}
    for name, n in sorted(shown.items(), key=lambda kv: -kv[1]):
        why = EXCEPTIONS.get(name)
        print(f"{n:4d}  {name}" + (f"  (exception: {why})" if why else ""))
    stale = sorted(set(EXCEPTIONS) - set(found))
    for name in stale:
        print(f"stale exception (no longer over {LIMIT} lines, or gone): {name}")
    bad = {k for k in found if k not in EXCEPTIONS}
    print(f"{len(found)} functions over {LIMIT} lines, {len(bad)} not excepted", file=sys.stderr)
    return 1 if bad or stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
