"""Figures of the small world for reports/world/: sample edits per category, and text-to-image samples."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from ip2p.data.world.examples import world_examples
from ip2p.data.world.edits import CATEGORIES


def _img(ax, x: torch.Tensor, title: str = "") -> None:
    ax.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy() if x.ndim == 3 else x.numpy(), cmap="gray",
              interpolation="nearest", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def edits_figure(path: Path, per_category: int = 2, split: str = "test") -> Path:
    """Rows: categories; for each sample: input | target | mask, titled with the instruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CATEGORIES), 3 * per_category, figsize=(3 * per_category * 1.35, len(CATEGORIES) * 1.55))
    by_cat: dict[str, list] = {c: [] for c in CATEGORIES}
    for e in world_examples(split, per_category * len(CATEGORIES), seed=0):  # the plain stream: varied scenes
        by_cat[e.category].append(e)
    for r, cat in enumerate(CATEGORIES):
        for k, e in enumerate(by_cat[cat]):
            a = axes[r, 3 * k:3 * k + 3]
            _img(a[0], e.load_input(), "input" if r == 0 else "")
            _img(a[1], e.load_target(), "target" if r == 0 else "")
            _img(a[2], e.load_mask().float(), "mask" if r == 0 else "")
            a[1].set_xlabel("\n".join(textwrap.wrap(f"[{cat}] {e.instruction}", 34)), fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def t2i_figure(path: Path, n: int = 16, sd_folder: str = "world:sd") -> Path:
    """Text-to-image samples of the world's SD (DDIM 20 steps, guidance 7.5) beside the true scene."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ip2p.models import resolve_source
    from ip2p.world.evaluate import sd_samples, eval_caption_items

    real, caps, _ = eval_caption_items(n)
    gen = sd_samples(resolve_source(sd_folder), caps)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.5, rows * 1.9))
    for i in range(n):
        a = axes[i // cols, 2 * (i % cols):2 * (i % cols) + 2]
        _img(a[0], gen[i], "generated" if i < cols else "")
        _img(a[1], real[i], "a true scene" if i < cols else "")
        a[0].set_xlabel("\n".join(textwrap.wrap(caps[i], 40)), fontsize=5.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path) -> list[Path]:
    out = Path(out)
    paths = [edits_figure(out / "edits_per_category.png")]
    try:
        paths.append(t2i_figure(out / "text_to_image_samples.png"))
    except Exception as e:  # the SD may not be built yet
        from ip2p.errors import ModelLoadError

        if not isinstance(e, ModelLoadError):
            raise
    return paths
