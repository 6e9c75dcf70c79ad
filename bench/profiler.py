"""Latency profiler of an InstructPix2Pix edit, component by component (``ip2p profile``).

One edit of ``batch`` requests (distinct instructions, images, seeds and sI values: a real
sweep chunk) is ``editor.edit`` itself, the editor prepared with the spec's fast-path settings
(``ip2p.fastpath``), timed through the editor's timing hook (``editor.region``): what is timed is
exactly what a user runs, for every prediction type. The named regions:

    text_encode     instructions and "" through the text encoder (prompt cache cleared first)
    vae_encode      image-conditioning latents (each distinct image once)
    schedule        sigmas, the guided model (3B conditioning batch, scales), the prepared
                    denoiser's timesteps and the pre-drawn noise
    unet            per step: the 3B model input and one UNet call
    guidance        per step: dual classifier-free guidance arithmetic
    sampler_update  per step: the Euler ancestral update with its noise
    vae_decode      latents to images, copied to the CPU

Outside every region (not attributed, counted in the whole edit): input checks, knob resolution,
chunking, per step the input scaling and the conversion to a denoised estimate, the NaN check.

After ``warmup`` uninstrumented edits (compilation, graph capture, allocator warm-up), each of
``repeats`` rounds runs one uninstrumented edit timed whole and one edit timed per component
(in alternating order).
Figures are the median, p10 and p90 per component (per step for the three step components),
timed with CUDA events on a GPU (no synchronisation inside the edit) and ``time.perf_counter``
on the CPU (``bench.timers``). The sum of the components' medians (step components times
``steps``) is reported against the whole edit's median: they agree when nothing escapes the
component timers.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` per component (the allocator's stats,
reset at each component's start; host-side, no sync); on the CPU the process's peak resident set
(``resource.getrusage(...).ru_maxrss``), which cannot be reset, so it is reported once.

Achieved TFLOP/s: FLOPs counted by ``ip2p.flops`` (matmul-class work, on a meta clone) over the
median time; the roofline share divides by the device's dense peak for the dtype
(``bench.hardware.PEAK_TFLOPS``, or ``peak_tflops`` given by the user). Optionally the eager editor
(no fast-path preparation) is timed on the same requests, and its images compared with the
profiled editor's. The device and versions a record names come from ``ip2p.util.provenance``.
"""
from __future__ import annotations

import gzip
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ip2p.errors import SpecError
from ip2p.util.provenance import device_info, runtime_versions

from bench.hardware import PEAK_TFLOPS, peak_entry, peak_precision
from bench.timers import CudaTimer, NullTimer, make_timer, summarize

COMPONENTS = ("text_encode", "vae_encode", "schedule", "unet", "guidance", "sampler_update", "vae_decode")
PER_STEP = ("unet", "guidance", "sampler_update")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

INSTRUCTIONS = ("make it night", "let gravity act", "turn the circle blue", "add a red square",
                "remove the triangle", "make the background green", "melt the star", "move the circle left")


# ---------------------------------------------------------------- the spec

@dataclass
class ProfileSpec:
    """What to profile: ``model`` (any ``load_components`` source), image side ``res`` in pixels
    (None: the model's native resolution), ``steps``, ``batch`` edits per chunk, ``dtype``
    (bf16/fp16/fp32), the fast path's settings, timing rounds, and optional extras."""

    model: str = "tiny"
    res: int | None = None
    steps: int = 20
    batch: int = 1
    dtype: str = "fp32"
    compile: str = "none"
    cuda_graphs: bool = False
    channels_last: bool = False
    sdpa: bool = True
    warmup: int = 1
    repeats: int = 5
    seed: int = 0
    device: str | None = None
    peak_tflops: float | None = None
    reference: bool = True
    reference_repeats: int = 3
    trace: str | None = None
    trace_steps: int | None = None

    def validate(self) -> "ProfileSpec":
        from ip2p.fastpath import COMPILE_MODES

        if self.dtype not in DTYPES:
            raise SpecError(f"--dtype {self.dtype!r}: must be one of {sorted(DTYPES)}")
        if self.compile not in COMPILE_MODES:
            raise SpecError(f"--compile {self.compile!r}: must be one of {list(COMPILE_MODES)}")
        for name in ("steps", "batch", "repeats"):
            if int(getattr(self, name)) < 1:
                raise SpecError(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.warmup < 0:
            raise SpecError(f"--warmup {self.warmup}: must be 0 or more")
        if self.res is not None and self.res < 1:
            raise SpecError(f"--res {self.res}: must be a positive number of pixels")
        if self.trace_steps is not None and self.trace_steps < 1:
            raise SpecError(f"--trace-steps {self.trace_steps}: must be at least 1")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise SpecError(f"--peak-tflops {self.peak_tflops}: must be a positive number of TFLOP/s")
        dev = torch.device(self.resolved_device())
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SpecError(f"--device {self.device}: no CUDA device is available here; use --device cpu")
        if self.cuda_graphs and dev.type != "cuda":
            raise SpecError(f"--cuda-graphs: needs a CUDA device, got {dev}; drop the flag or run on a GPU")
        return self

    def resolved_device(self) -> str:
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")


def make_requests(batch: int, res: int, seed: int = 0):
    """``batch`` distinct requests: random images in [0, 1], instructions, sI in 1.0..1.7, sT 7.5,
    seeds ``seed + i``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, res, res, generator=g)
    k = len(INSTRUCTIONS)
    instructions = [INSTRUCTIONS[i % k] + (f" {i // k}" if i >= k else "") for i in range(batch)]
    image_guidance = [1.0 + 0.1 * (i % 8) for i in range(batch)]
    guidance = [7.5] * batch
    seeds = [seed + i for i in range(batch)]
    return images, instructions, image_guidance, guidance, seeds


# ---------------------------------------------------------------- FLOPs

def component_flops(editor, batch: int, latent_hw: tuple[int, int], res: int) -> dict[str, dict[str, Any]]:
    """FLOPs per component call, counted on meta clones (``None`` with the reason when a count
    fails: a missing figure, never a zero)."""
    from ip2p.flops import counting, meta_clone, unet_forward_flops

    c = editor.components
    tokens = int(getattr(c.tokenizer, "model_max_length", 77))
    out: dict[str, dict[str, Any]] = {}

    def attempt(name, fn):
        try:
            out[name] = {"flops": int(fn()), "counter": "ip2p.flops (module hooks + attention products, meta device)"}
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            out[name] = {"flops": None, "error": f"{type(e).__name__}: {e}"}

    attempt("unet", lambda: unet_forward_flops(c.unet, 3 * batch, latent_hw, text_tokens=tokens).total)

    def vae_encode():
        vae = meta_clone(c.vae)
        with torch.no_grad(), counting(vae) as n:
            vae.encode(torch.empty(1, 3, res, res, device="meta")).latent_dist.mode()
        return n.total * batch  # the editor encodes one image per VAE call

    def vae_decode():
        vae = meta_clone(c.vae)
        with torch.no_grad(), counting(vae) as n:
            vae.decode(torch.empty(batch, int(vae.config.latent_channels), *latent_hw, device="meta"))
        return n.total

    def text_encode():
        enc = meta_clone(c.text_encoder)
        ids = torch.zeros(batch + 1, tokens, dtype=torch.long, device="meta")
        with torch.no_grad(), counting(enc) as n:
            enc(ids)
        return n.total

    attempt("vae_encode", vae_encode)
    attempt("vae_decode", vae_decode)
    attempt("text_encode", text_encode)
    return out


# ---------------------------------------------------------------- the profiler

def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="edit", file=sys.stderr, dynamic_ncols=True)


def _write_trace(prof, path: Path) -> str:
    from ip2p.util.io import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.raw.json")
    prof.export_chrome_trace(str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    atomic_write_bytes(path, gzip.compress(data) if path.suffix == ".gz" else data)
    return str(path)


@dataclass
class ProfiledEdit:
    """The editor and the requests a profile times: ``run(timer, steps)`` is one ``editor.edit`` of
    the requests with ``timer.region`` installed as the editor's timing hook, so what is timed is
    exactly what a user runs (the same sampler, denoiser, guidance and noise for every prediction
    type and method on the core). The prompt cache is cleared first: text encoding is timed."""

    editor: Any
    images: torch.Tensor
    instructions: list[str]
    image_guidance: list[float]
    guidance: list[float]
    seeds: list[int]
    steps: int

    def run(self, timer, steps: int | None = None) -> torch.Tensor:
        ed = self.editor
        ed.prompts.clear()
        saved, ed.region = ed.region, timer.region
        try:
            return ed.edit(self.images, self.instructions, image_guidance_scale=self.image_guidance,
                           guidance_scale=self.guidance, num_inference_steps=steps or self.steps, seeds=self.seeds,
                           resize=None)
        finally:
            ed.region = saved


def profile_edit(spec: ProfileSpec, *, editor=None, command: str | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Profile one edit of ``spec.batch`` requests; returns the result record (JSON-ready).
    ``editor``: an ``InstructPix2PixEditor`` prepared with the spec's fast-path settings, to reuse
    (a script profiling several batch sizes compiles the UNet once)."""
    spec.validate()
    device = torch.device(spec.resolved_device())
    t_load = time.perf_counter()
    editor = _profiled_editor(spec, editor, device)
    load_s = time.perf_counter() - t_load
    res = _resolution(spec, editor)
    images, instructions, s_i, s_t, seeds = make_requests(spec.batch, res, spec.seed)
    edit = ProfiledEdit(editor, images, instructions, s_i, s_t, seeds, spec.steps)
    whole, parts, warmup_s, edited = _timing_rounds(spec, edit, device, progress)
    latent_hw = (res // editor.vae_scale_factor, res // editor.vae_scale_factor)
    record: dict[str, Any] = {
        "benchmark": "ip2p_profile",
        "command": command,
        "spec": {**asdict(spec), "res": res},
        "fast_path": editor._prepared.describe(),
        "model": _model_info(editor, latent_hw),
        "device": device_info(device),
        "versions": runtime_versions(),
        "timer": parts.kind,
        "load_s": load_s,
        "warmup_s": warmup_s,
        **_timing_summary(spec, parts, whole),
        **_roofline(spec, editor, device, latent_hw, res, parts),
        "memory": _memory(device, parts),
    }
    if spec.reference:
        record["reference_editor_edit"] = _time_editor(editor, images, instructions, s_i, s_t, seeds, spec, device,
                                                       edited)
    if spec.trace:
        try:
            record["trace"] = _trace(edit.run, spec, device)
        except Exception as e:  # noqa: BLE001 - the timings stand without the trace; say why it is missing
            record["trace"] = {"path": None, "error": f"{type(e).__name__}: {e}"}
    return record


def _profiled_editor(spec: ProfileSpec, editor, device: torch.device):
    """The editor to profile: ``editor`` (checked against the spec's fast-path settings) or one
    loaded from ``spec.model`` with them."""
    from ip2p.editor import load_editor
    from ip2p.fastpath import FastPathSettings

    settings = FastPathSettings(compile=spec.compile, cuda_graphs=spec.cuda_graphs, channels_last=spec.channels_last,
                                sdpa=spec.sdpa)
    if editor is None:
        return load_editor(spec.model, device=device, dtype=DTYPES[spec.dtype], resize=None, max_batch=spec.batch,
                           seed=spec.seed, fast=settings)
    if editor.fast != settings:
        raise SpecError(f"profile_edit: the editor given was prepared with fast path {editor.fast}, the spec asks for "
                        f"{settings}")
    if editor.max_batch < spec.batch:
        raise SpecError(f"profile_edit: the editor given samples {editor.max_batch} edits per chunk, the spec's batch "
                        f"is {spec.batch}; give an editor with max_batch >= {spec.batch}")
    return editor


def _resolution(spec: ProfileSpec, editor) -> int:
    c = editor.components
    vae_f = c.vae_scale_factor
    unet_f = 2 ** (len(c.unet.config.block_out_channels) - 1)
    res = int(spec.res or c.resolution or 512)
    if res % (vae_f * unet_f):
        raise SpecError(f"--res {res}: must be a multiple of {vae_f * unet_f} for {spec.model} "
                        f"(VAE factor {vae_f} x UNet downsampling {unet_f})")
    return res


def _model_info(editor, latent_hw: tuple[int, int]) -> dict[str, Any]:
    c = editor.components
    return {"source": c.source, "info": c.info, "latent_shape": [int(c.vae.config.latent_channels), *latent_hw],
            "unet_parameters": int(sum(p.numel() for p in c.unet.parameters()))}


def _timing_rounds(spec: ProfileSpec, edit: ProfiledEdit, device: torch.device, progress: bool):
    """``warmup`` untimed edits, then ``repeats`` rounds of one edit timed whole and one timed per
    component, in alternating order. Returns (whole timer, component timer, warm-up seconds, the
    last instrumented edit's images)."""
    whole, parts, null = make_timer(device), make_timer(device), NullTimer()
    bar = _progress(spec.warmup + 2 * spec.repeats, progress, f"profile {spec.model} b{spec.batch}")
    t_warm = time.perf_counter()
    edited = None
    with torch.no_grad():
        for _ in range(spec.warmup):
            edit.run(null)
            if bar:
                bar.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t_warm
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for r in range(spec.repeats):
            for instrumented in ((False, True) if r % 2 == 0 else (True, False)):  # alternate: no order bias
                if instrumented:
                    edited = edit.run(parts)
                    parts.collect()
                else:
                    with whole.region("whole"):
                        edit.run(null)
                    whole.collect()
            if bar:
                bar.update(2)
    if bar:
        bar.close()
    return whole, parts, warmup_s, edited


def _timing_summary(spec: ProfileSpec, parts, whole) -> dict[str, Any]:
    """Per component statistics, the step, the whole edit and how the parts add up to it."""
    components: dict[str, dict[str, Any]] = {}
    for name in COMPONENTS:
        s = summarize(parts.samples[name])
        per_edit = s["median_ms"] * (spec.steps if name in PER_STEP else 1)
        components[name] = {**s, "per": "step" if name in PER_STEP else "edit", "median_ms_per_edit": per_edit,
                            "peak_memory_bytes": parts.peak_bytes.get(name) if isinstance(parts, CudaTimer) else None}
    sum_medians = sum(v["median_ms_per_edit"] for v in components.values())
    for v in components.values():
        v["share_of_sum"] = v["median_ms_per_edit"] / sum_medians
    whole_s = summarize(whole.samples["whole"])
    # each instrumented edit's components summed, then the median over edits: the same statistic
    # as the whole edit's (a per-step median times steps would drop the steps' spread)
    per_edit_sums = [sum(sum(parts.samples[n][r * k:(r + 1) * k]) for n, k in
                         ((n, spec.steps if n in PER_STEP else 1) for n in COMPONENTS)) for r in range(spec.repeats)]
    step = np.add.reduce([np.asarray(parts.samples[n]) for n in PER_STEP])
    return {
        "components": components,
        "step": {**summarize(step), "what": "unet + guidance + sampler_update, per step"},
        "whole": {**whole_s, "what": "one uninstrumented editor.edit: text_encode .. vae_decode, images on the CPU"},
        "sum_of_parts_ms": float(np.median(per_edit_sums)),
        "sum_of_parts_what": "median over instrumented edits of the sum of their component times",
        "sum_over_whole": float(np.median(np.asarray(per_edit_sums) / np.asarray(whole.samples["whole"]))),
        "sum_over_whole_what": "median over rounds of (sum of parts of the round's instrumented edit) / (the round's "
                               "whole edit): paired, so a change of machine load between rounds cancels",
        "sum_of_component_medians_ms": sum_medians,
        "ms_per_step_whole": whole_s["median_ms"] / spec.steps,
        "edit_steps_per_s": spec.batch * spec.steps / (whole_s["median_ms"] * 1e-3),
    }


def _roofline(spec: ProfileSpec, editor, device: torch.device, latent_hw, res: int, parts) -> dict[str, Any]:
    """FLOPs per component, achieved TFLOP/s over the median time and the share of the peak."""
    flops = component_flops(editor, spec.batch, latent_hw, res)
    peak_key = peak_entry(device_info(device)["name"]) if device.type == "cuda" else None
    prec = peak_precision(spec.dtype) if device.type == "cuda" else spec.dtype
    if spec.peak_tflops is not None:
        peak, peak_source = float(spec.peak_tflops), "--peak-tflops (given by the user)"
    elif peak_key is not None:
        peak, peak_source = PEAK_TFLOPS[peak_key][prec], f"datasheet dense peak, {peak_key} {prec} (bench/hardware.py PEAK_TFLOPS)"
    else:
        peak, peak_source = None, "unknown device: pass --peak-tflops for a roofline share"
    for name, f in flops.items():
        n = f.get("flops")
        ms = summarize(parts.samples[name])["median_ms"]
        f["achieved_tflops"] = (n / (ms * 1e-3) / 1e12) if n and ms > 0 else None
        f["roofline_share"] = (f["achieved_tflops"] / peak) if (peak and f["achieved_tflops"] is not None) else None
    unet_f_call = flops["unet"].get("flops")
    return {"flops": flops,
            "unet_gflop_per_sample": unet_f_call / (3 * spec.batch) / 1e9 if unet_f_call else None,
            "achieved_tflops_unet": flops["unet"]["achieved_tflops"], "peak_tflops": peak, "peak_source": peak_source,
            "roofline_share_unet": flops["unet"]["roofline_share"]}


def _memory(device: torch.device, parts) -> dict[str, Any]:
    if device.type == "cuda":
        return {"method": "torch.cuda.max_memory_allocated (per component, reset at its start)",
                "peak_bytes": int(max(parts.peak_bytes.values())) if parts.peak_bytes else None}
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": "resource.getrusage(RUSAGE_SELF).ru_maxrss: the process's peak resident set since it "
                      "started (model loading included); not per component, it cannot be reset",
            "peak_bytes": int(ru * (1 if sys.platform == "darwin" else 1024))}


def _time_editor(editor, images, instructions, s_i, s_t, seeds, spec, device, fast_images) -> dict[str, Any]:
    """The eager editor (the same model without the fast path's preparation: no pre-drawn noise,
    no compilation or graphs) on the same requests: wall time per call (host clock, synchronised),
    and how far the profiled editor's images are from its images."""
    from ip2p.editor import InstructPix2PixEditor

    eager = InstructPix2PixEditor(editor.components, device=editor.device, dtype=editor.dtype,
                                  max_batch=editor.max_batch, resize=None)

    def call():
        eager.prompts.clear()
        return eager.edit(images, instructions, image_guidance_scale=s_i, guidance_scale=s_t,
                          num_inference_steps=spec.steps, seeds=seeds, resize=None)

    call()  # warm-up
    times = []
    for _ in range(max(1, spec.reference_repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ref = call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    s = summarize(times)
    diff = (fast_images.float().cpu() - ref.float()).abs()
    return {**s, "timer": "time.perf_counter with torch.cuda.synchronize" if device.type == "cuda" else "time.perf_counter",
            "what": "the eager editor's edit (eager UNet, noise drawn per step), images returned on the CPU",
            "ms_per_step": s["median_ms"] / spec.steps,
            "edit_steps_per_s": spec.batch * spec.steps / (s["median_ms"] * 1e-3),
            "fast_vs_editor_max_abs_diff": float(diff.max()), "fast_vs_editor_mean_abs_diff": float(diff.mean())}


def _trace(one_edit, spec: ProfileSpec, device: torch.device) -> dict[str, Any]:
    """One more instrumented edit under ``torch.profiler``, components labelled, as a Chrome trace
    (gzip-compressed when the path ends in ``.gz``)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    timer = make_timer(device, trace=True)
    steps = spec.trace_steps or spec.steps
    with torch.no_grad(), profile(activities=acts) as prof:
        one_edit(timer, steps)
        timer.collect()
    return {"path": _write_trace(prof, Path(spec.trace)), "activities": [a.name for a in acts], "steps": steps}


def write_record(record: dict[str, Any], out: str | os.PathLike) -> Path:
    from ip2p.util.io import atomic_write_json

    return atomic_write_json(Path(out), record)


def format_summary(record: dict[str, Any]) -> str:
    """A short table: per component median/p10/p90, share, achieved TFLOP/s; then the whole."""
    sp = record["spec"]
    lines = [f"{sp['model']} {sp['res']}px {sp['dtype']} batch {sp['batch']} x {sp['steps']} steps on "
             f"{record['device']['name']} (compile={sp['compile']}, cuda_graphs={sp['cuda_graphs']}, "
             f"channels_last={sp['channels_last']}; timer {record['timer']})",
             f"{'component':<16}{'per':>5}{'median ms':>11}{'p10':>9}{'p90':>9}{'share':>7}{'TFLOP/s':>9}"]
    for name, v in record["components"].items():
        tf = record["flops"].get(name, {}).get("achieved_tflops")
        lines.append(f"{name:<16}{v['per']:>5}{v['median_ms']:>11.3f}{v['p10_ms']:>9.3f}{v['p90_ms']:>9.3f}"
                     f"{100 * v['share_of_sum']:>6.1f}%{(f'{tf:.3f}' if tf is not None else '-'):>9}")
    w = record["whole"]
    lines.append(f"whole edit: median {w['median_ms']:.2f} ms (p10 {w['p10_ms']:.2f}, p90 {w['p90_ms']:.2f}); "
                 f"sum of parts {record['sum_of_parts_ms']:.2f} ms ({100 * record['sum_over_whole']:.1f}% of whole)")
    lines.append(f"{record['ms_per_step_whole']:.2f} ms per step (whole edit / steps), "
                 f"{record['edit_steps_per_s']:.1f} edit-steps/s")
    share = record.get("roofline_share_unet")
    if record.get("unet_gflop_per_sample"):
        lines.append(f"UNet: {record['unet_gflop_per_sample']:.2f} GFLOP per sample, "
                     f"{record['achieved_tflops_unet']:.3f} TFLOP/s achieved"
                     + (f", {100 * share:.1f}% of {record['peak_tflops']:.1f} peak ({record['peak_source']})"
                        if share is not None else f" ({record['peak_source']})"))
    mem = record["memory"]
    if mem.get("peak_bytes") is not None:
        lines.append(f"peak memory {mem['peak_bytes'] / 2**20:.1f} MiB ({mem['method'].split(':')[0]})")
    ref = record.get("reference_editor_edit")
    if ref:
        lines.append(f"editor.edit (eager): {ref['median_ms']:.2f} ms per edit, {ref['ms_per_step']:.2f} ms per step; "
                     f"fast vs editor max |diff| {ref['fast_vs_editor_max_abs_diff']:.2e}")
    return "\n".join(lines)


__all__ = ["ProfileSpec", "ProfiledEdit", "profile_edit", "component_flops", "make_requests", "write_record", "format_summary", "COMPONENTS", "PER_STEP", "DTYPES"]
