"""Timers of the profilers: a named ``region(name)`` context per component, timed with CUDA events on
a GPU (nothing synchronises until ``collect``; the allocator's peak per region) and with
``time.perf_counter`` on the CPU, plus a timer that times nothing; and the summary statistics
(median, p10, p90, mean) of a component's samples in milliseconds."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Any, Sequence

import numpy as np
import torch


class NullTimer:
    """A timer that times nothing (the uninstrumented edits)."""

    kind = "none"
    _null = nullcontext()

    def region(self, name: str):
        return self._null


class CpuTimer:
    """``time.perf_counter`` around each region (CPU work is synchronous)."""

    kind = "time.perf_counter"

    def __init__(self, trace: bool = False):
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.peak_bytes: dict[str, int] = {}
        self.trace = trace

    @contextmanager
    def region(self, name: str):
        label = torch.profiler.record_function(name) if self.trace else nullcontext()
        with label:
            t0 = time.perf_counter()
            yield
            self.samples[name].append((time.perf_counter() - t0) * 1e3)

    def collect(self) -> None:
        pass


class CudaTimer:
    """A CUDA event pair around each region on the current stream; nothing synchronises until
    ``collect``. Also the allocator's peak per region (host-side stats, no sync)."""

    kind = "torch.cuda.Event"

    def __init__(self, trace: bool = False):
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.peak_bytes: dict[str, int] = defaultdict(int)
        self._pending: list[tuple[str, Any, Any]] = []
        self.trace = trace

    @contextmanager
    def region(self, name: str):
        label = torch.profiler.record_function(name) if self.trace else nullcontext()
        with label:
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.peak_bytes[name] = max(self.peak_bytes[name], torch.cuda.max_memory_allocated())
            self._pending.append((name, start, end))

    def collect(self) -> None:
        torch.cuda.synchronize()
        for name, start, end in self._pending:
            self.samples[name].append(start.elapsed_time(end))
        self._pending.clear()


def make_timer(device: torch.device, trace: bool = False):
    """The timer of ``device``: CUDA events on a GPU, ``time.perf_counter`` elsewhere; ``trace`` also
    labels each region for ``torch.profiler``."""
    return CudaTimer(trace) if device.type == "cuda" else CpuTimer(trace)


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Median, p10, p90 and mean of samples in ms, and their count."""
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()), "n": int(a.size)}


__all__ = ["NullTimer", "CpuTimer", "CudaTimer", "make_timer", "summarize"]
