"""Metrics: CLIP similarities (open_clip), LPIPS, pixel and masked metrics, embedding cache.

- :class:`ClipSimilarity` -- sim_0, sim_1, sim_direction, sim_image (REFERENCE.md), cached.
- :func:`load_clip` -- any CLIP (built-in + tag/file, folder, ``world:clip``), no downloads.
- :class:`EmbeddingCache` -- content-keyed embeddings, in memory or a shared SQLite file.
- :class:`LPIPS` -- lpips package, backbone from the torch cache, never downloaded.
- :mod:`ip2p.metrics.pixel` -- l1, l2, psnr, ssim and their masked (outside-the-edit) forms.
- :class:`MetricSuite` -- every column for a batch of edits, with ``spec()`` for provenance.
- :mod:`ip2p.metrics.dino` -- DINO similarity and PIE-Bench's structure distance; :func:`load_dino`.
- :mod:`ip2p.metrics.benchmark_metrics` -- PIE-Bench background and CLIP scores; :class:`BenchmarkMetrics`.
"""
from ip2p.metrics.cache import EmbeddingCache, embedding_key
from ip2p.metrics.clip_models import LoadedClip, load_clip, save_clip_folder
from ip2p.metrics.clip_similarity import ClipSimilarity, clip_similarities
from ip2p.metrics.lpips_metric import LPIPS
from ip2p.metrics.pixel import (
    l1,
    l2,
    masked_l1_outside,
    masked_l2_outside,
    masked_lpips_outside,
    masked_psnr_outside,
    masked_ssim_outside,
    psnr,
    ssim,
)
from ip2p.metrics.suite import MetricSuite


def __getattr__(name):  # the DINO metrics import transformers/torchvision: load them on first use
    if name in ("load_dino", "dino_similarity", "structure_distance"):
        from ip2p.metrics import dino

        return getattr(dino, name)
    if name in ("BenchmarkMetrics", "pie_unedited", "clip_score"):
        from ip2p.metrics import benchmark_metrics

        return getattr(benchmark_metrics, name)
    raise AttributeError(f"module 'ip2p.metrics' has no attribute {name!r}")


__all__ = [
    "ClipSimilarity",
    "clip_similarities",
    "EmbeddingCache",
    "embedding_key",
    "LoadedClip",
    "load_clip",
    "save_clip_folder",
    "LPIPS",
    "MetricSuite",
    "l1",
    "l2",
    "psnr",
    "ssim",
    "masked_l1_outside",
    "masked_l2_outside",
    "masked_psnr_outside",
    "masked_ssim_outside",
    "masked_lpips_outside",
    "load_dino",
    "dino_similarity",
    "structure_distance",
    "BenchmarkMetrics",
    "pie_unedited",
    "clip_score",
]
