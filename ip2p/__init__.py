"""ip2p-bench: instruction-based image editing (InstructPix2Pix) with an evaluation harness."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_editor", "InstructPix2PixEditor", "__version__"]


def __getattr__(name):  # lazy: `import ip2p` stays cheap for the CLI
    if name in ("load_editor", "InstructPix2PixEditor"):
        from ip2p import editor

        return getattr(editor, name)
    raise AttributeError(name)
