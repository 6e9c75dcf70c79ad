"""Bootstrap intervals: the one implementation the harness's tables and the world's cards use."""
from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                 rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` (NaNs ignored) with a percentile bootstrap interval."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) == 1:
        return mean, mean, mean
    rng = rng or np.random.default_rng(0)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(v))
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        means[s:s + k] = v[rng.integers(0, len(v), size=(k, len(v)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)
