"""Metrics of a sweep: a spec's ``metrics`` section -> ``ip2p.metrics.MetricSuite``, per batch.

The suite is built once per process; its CLIP embeddings are cached by content in the run
folder (``<run>/cache/clip_embeddings.sqlite``), so every distinct input image and caption is
encoded once per run, whatever the number of settings, reruns or processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from bench.spec import MetricsSpec


class Scorer:
    """``score(inputs, outputs, text_0, text_1, targets, masks) -> list of {column: float}``.

    Lists hold one entry per edit (images ``[3, H, W]`` in [0, 1]); ``targets``/``masks`` entries
    may be None. Edits are grouped by size and by which extras they have, so a batch may mix them.
    """

    def __init__(self, metrics: MetricsSpec, device: str = "cpu", cache_dir: str | Path | None = None):
        from ip2p.metrics.suite import MetricSuite

        self.metrics = metrics
        clip = lpips = None
        if "clip" in metrics.compute:
            from ip2p.metrics.clip_similarity import ClipSimilarity

            cache = None
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                cache = str(cache_dir)
            clip = ClipSimilarity(metrics.clip.model, metrics.clip.pretrained, metrics.clip.preprocess,
                                  device=device, cache=cache)
        if "lpips" in metrics.compute:
            from ip2p.metrics.lpips_metric import LPIPS

            lpips = LPIPS(metrics.lpips.net, device=device)
        self.suite = MetricSuite(clip=clip, lpips=lpips)
        self._spec = None

    def spec(self) -> dict:
        if self._spec is None:
            self._spec = {"groups": list(self.metrics.compute), **self.suite.spec()}
        return self._spec

    @torch.no_grad()
    def score(self, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], text_0: Sequence[str],
              text_1: Sequence[str], targets: Sequence[torch.Tensor | None],
              masks: Sequence[torch.Tensor | None]) -> list[dict[str, float]]:
        use_targets = "target" in self.metrics.compute
        use_masks = "masked" in self.metrics.compute
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(outputs):
            key = (tuple(x.shape), use_targets and targets[i] is not None, use_masks and masks[i] is not None)
            groups.setdefault(key, []).append(i)
        rows: list[dict[str, float]] = [{} for _ in outputs]
        for (_, has_t, has_m), idx in groups.items():
            t0 = [text_0[i] for i in idx]
            t1 = [text_1[i] for i in idx]
            captions = any(t0) or any(t1)  # a test set without captions: no caption-based columns
            cols = self.suite(
                torch.stack([inputs[i] for i in idx]), torch.stack([outputs[i] for i in idx]),
                t0 if captions else None, t1 if captions else None,
                targets=torch.stack([targets[i] for i in idx]) if has_t else None,
                masks=torch.stack([masks[i] for i in idx]) if has_m else None,
            )
            for j, i in enumerate(idx):
                rows[i] = {k: float(v[j]) for k, v in cols.items()}
        return rows
