"""Latency profile of a diffusers editing pipeline run by its own code (``ip2p profile --pipeline``).

The editor of ``baselines.diffusers_pipelines`` edits ``batch`` requests; hooks on the pipeline's own
modules time every call of each component: the denoiser (UNet or transformer: its calls are the
per-step figures), every text encoder, and the VAE's ``encode`` and ``decode`` (pipelines call those
methods, not ``forward``, so they are wrapped for the run and restored after). On CUDA each hook
synchronises the device (the figures are wall time of the work, at the cost of some overlap).
FLOPs per call come from ``torch.utils.flop_counter.FlopCounterMode`` entered in the same hooks
during one extra counted edit (``ip2p.flops`` has formulas for the SD UNet only; one counter for
every family keeps them comparable). After ``warmup`` edits, ``repeats`` timed edits give the
median, p10 and p90 per component call and of the whole edit.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import torch

from bench.hardware import PEAK_TFLOPS, peak_entry, peak_precision
from bench.timers import summarize
from ip2p.util.provenance import device_info, runtime_versions
from ip2p.errors import SpecError

STEP_KNOBS = ("num_inference_steps", "num_inversion_steps")


class ComponentHooks:
    """Times (and optionally FLOP-counts) each call of a pipeline's components."""

    def __init__(self, pipe, device: torch.device):
        self.pipe, self.cuda = pipe, device.type == "cuda"
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.flops: dict[str, list[int]] = defaultdict(list)
        self.counting = False
        self._handles: list[Any] = []
        self._wrapped: list[tuple[Any, str]] = []
        self._open: dict[str, list] = defaultdict(list)

    def _enter(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        mode = None
        if self.counting:
            from torch.utils.flop_counter import FlopCounterMode

            mode = FlopCounterMode(display=False)
            mode.__enter__()
        self._open[name].append((time.perf_counter(), mode))

    def _exit(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        t0, mode = self._open[name].pop()
        if mode is not None:
            mode.__exit__(None, None, None)
            self.flops[name].append(int(mode.get_total_flops()))
        else:
            self.ms[name].append((time.perf_counter() - t0) * 1e3)

    def install(self) -> "ComponentHooks":
        for name, m in self.pipe.components.items():
            if not isinstance(m, torch.nn.Module):
                continue
            if hasattr(m, "encode") and hasattr(m, "decode") and name.startswith("vae"):
                for meth in ("encode", "decode"):
                    self._wrap(m, meth, f"{name}_{meth}")
            elif name in ("unet", "transformer") or name.startswith("text_encoder") or name == "image_encoder":
                self._handles.append(m.register_forward_pre_hook(lambda *_, n=name: self._enter(n)))
                self._handles.append(m.register_forward_hook(lambda *_, n=name: self._exit(n)))
        return self

    def _wrap(self, module, meth: str, label: str) -> None:
        orig = getattr(module, meth)

        def wrapped(*a, **k):
            self._enter(label)
            try:
                return orig(*a, **k)
            finally:
                self._exit(label)

        setattr(module, meth, wrapped)
        self._wrapped.append((module, meth))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for module, meth in self._wrapped:
            delattr(module, meth)  # the class's method shows through again
        self._handles, self._wrapped = [], []


def _requests(editor, batch: int, res: int, steps: int, seed: int):
    from ip2p.protocol import EditRequest

    g = torch.Generator().manual_seed(seed)
    knobs = {k: steps for k in STEP_KNOBS if k in editor.declared_knobs}
    return [EditRequest(image=torch.rand(3, res, res, generator=g), instruction=f"make the square blue {i}",
                        input_caption=f"a red square {i}", output_caption=f"a blue square {i}", seed=seed + i,
                        knobs={**knobs, "resize": None}, item_id=f"profile-{i}") for i in range(batch)]


@contextmanager
def _synced(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    box: dict[str, float] = {}
    yield box
    if device.type == "cuda":
        torch.cuda.synchronize()
    box["ms"] = (time.perf_counter() - t0) * 1e3


def profile_pipeline(model: str, *, pipeline: str | None = None, res: int | None = None, steps: int = 20,
                     batch: int = 1, dtype: str = "bf16", device: str | None = None, warmup: int = 1, repeats: int = 3,
                     seed: int = 0, cpu_offload: bool = False, attention_backend: str | None = None,
                     count_flops: bool = True, command: str | None = None) -> dict[str, Any]:
    """Profile ``batch`` edits of ``model`` (a pipeline folder or hub id) through its own pipeline."""
    from baselines.diffusers_pipelines import load_pipeline_editor

    if min(steps, batch, repeats) < 1 or warmup < 0:
        raise SpecError("--steps, --batch and --repeats must be at least 1, --warmup at least 0")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    editor = load_pipeline_editor(model, pipeline=None if pipeline in (None, "auto") else pipeline, device=dev,
                                  dtype=dtype, max_batch=batch, cpu_offload=cpu_offload,
                                  attention_backend=attention_backend)
    res = int(res or editor.family.resolution)
    reqs = _requests(editor, batch, res, steps, seed)
    hooks = ComponentHooks(editor.pipe, dev).install()
    try:
        for _ in range(warmup):
            editor.run(reqs)
        hooks.ms.clear()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        whole = []
        for _ in range(repeats):
            with _synced(dev) as box:
                editor.run(reqs)
            whole.append(box["ms"])
        if count_flops:
            hooks.counting = True
            editor.run(reqs)
    finally:
        hooks.remove()
    return _record(editor, hooks, whole, dict(model=model, pipeline=type(editor.pipe).__name__, res=res, steps=steps,
                                              batch=batch, dtype=dtype, warmup=warmup, repeats=repeats, seed=seed,
                                              cpu_offload=cpu_offload, attention_backend=attention_backend),
                   dev, command)


def _record(editor, hooks: ComponentHooks, whole: list[float], spec: dict, dev: torch.device, command) -> dict:
    repeats = spec["repeats"]
    peak = PEAK_TFLOPS.get(peak_entry(device_info(dev)["name"]) or "", {}).get(peak_precision(spec["dtype"]))
    comps = {}
    for name, ms in hooks.ms.items():
        s = summarize(ms)
        flops = hooks.flops.get(name)
        per_call = int(sum(flops) / len(flops)) if flops else None
        comps[name] = {**s, "calls_per_edit": len(ms) / repeats, "ms_per_edit": sum(ms) / repeats,
                       "flops_per_call": per_call,
                       "achieved_tflops": per_call / (s["median_ms"] * 1e9) if per_call and s["median_ms"] > 0 else None}
    den = "transformer" if "transformer" in comps else "unet"
    w = summarize(whole)
    rec = {"kind": "pipeline", "command": command, "spec": spec, "family": editor.family.name,
           "device": device_info(dev), "versions": runtime_versions(), "timer": "time.perf_counter (synchronised hooks)",
           "flop_counter": "torch.utils.flop_counter.FlopCounterMode", "components": comps, "whole": w,
           "denoiser": den, "denoiser_ms_per_step": comps.get(den, {}).get("median_ms"),
           "denoiser_calls_per_edit": comps.get(den, {}).get("calls_per_edit"),
           "sum_of_parts_ms": sum(c["ms_per_edit"] for c in comps.values()),
           "peak_tflops": peak, "identity": editor.identity()}
    d = comps.get(den, {})
    rec["roofline_share_denoiser"] = (d["achieved_tflops"] / peak) if peak and d.get("achieved_tflops") else None
    rec["memory"] = ({"peak_bytes": int(torch.cuda.max_memory_allocated(dev)), "method": "torch.cuda.max_memory_allocated"}
                     if dev.type == "cuda" else {"peak_bytes": None, "method": "not measured on the CPU"})
    return rec


def format_pipeline_summary(rec: dict[str, Any]) -> str:
    sp = rec["spec"]
    lines = [f"{sp['pipeline']} ({rec['family']}) {sp['res']}px {sp['dtype']} batch {sp['batch']} x {sp['steps']} steps "
             f"on {rec['device']['name']}",
             f"{'component':<22}{'calls':>7}{'median ms':>11}{'p10':>9}{'p90':>9}{'GFLOP/call':>12}{'TFLOP/s':>9}"]
    for name, c in rec["components"].items():
        gf = f"{c['flops_per_call'] / 1e9:.3f}" if c["flops_per_call"] is not None else "-"
        tf = f"{c['achieved_tflops']:.3f}" if c["achieved_tflops"] is not None else "-"
        lines.append(f"{name:<22}{c['calls_per_edit']:>7.1f}{c['median_ms']:>11.3f}{c['p10_ms']:>9.3f}"
                     f"{c['p90_ms']:>9.3f}{gf:>12}{tf:>9}")
    w = rec["whole"]
    lines.append(f"whole edit: median {w['median_ms']:.2f} ms (p10 {w['p10_ms']:.2f}, p90 {w['p90_ms']:.2f}); "
                 f"components {rec['sum_of_parts_ms']:.2f} ms per edit")
    if rec["memory"]["peak_bytes"] is not None:
        lines.append(f"peak memory {rec['memory']['peak_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


__all__ = ["profile_pipeline", "format_pipeline_summary", "ComponentHooks"]
