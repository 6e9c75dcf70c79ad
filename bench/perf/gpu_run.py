"""The prepared GPU run of issue 17: one process, one device call, results written as it goes.

    bash bench/perf/gpu_run.sh                 # on the GPU machine (installs the carried wheels first)
    python -m bench.perf.gpu_run --smoke --out /tmp/smoke   # the same code path on `tiny`, on the CPU

Stages (each writes its JSON under ``--out`` (default ``$OUT``) as soon as it ends, and a failed
stage is recorded and the run goes on):

1. ``summary.json`` from the start: device, versions, and the two ceilings measured here (a large
   bf16 matmul's TFLOP/s and a device-to-device copy's GB/s), so the roofline share can be read
   against the datasheet peak and against what this card really does.
2. diffusers' ``StableDiffusionInstructPix2PixPipeline``, one edit at a time (eager, same dtype),
   measured before anything prepares the UNet.
3. ``profile_b1.json``: ``bench.profiler`` on one edit (the latency figure) of the editor with its
   fast path (compile default + CUDA graphs + channels-last), the eager editor timed alongside;
   ``trace_b1.json.gz``: a torch.profiler trace of a short edit.
4. ``profile_b16.json``: the same with 16 edits per chunk (a sweep chunk: sI varies per edit).
5. ``throughput.json``: edit-steps/s of the fast editor (16 edits per call) against the pipeline;
   at the end, when time is left, 32 edits per call too (one more compilation).
6. The fast path's GPU tests (``pytest tests/test_fastpath.py -m gpu``), when time is left.
7. ``summary.json`` again, with the issue's checks: a single edit at <= 12 ms per step, a batched
   sweep at >= 6x the pipeline's edit-steps/s, and the UNet's roofline share.

Model: ``sd15`` random weights (seed 0) at 512x512, bf16, 50 steps (REFERENCE.md's pipeline
figure, 43 ms/step on an H100, is for 50 steps). A deadline (``--budget-s``) skips stages that would
not finish in time rather than lose what is done. If compilation fails, the run falls back to the
eager UNet with our CUDA-graph wrapper, and says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

SINGLE_EDIT_MS_PER_STEP_GOAL = 12.0
BATCHED_RATIO_GOAL = 6.0


class Run:
    """Stage bookkeeping: deadline, errors, and the summary rewritten after every stage."""

    def __init__(self, out: Path, budget_s: float, command: str):
        self.out = out
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.summary: dict[str, Any] = {"benchmark": "ip2p_gpu_run", "command": command, "stages": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def write(self, name: str, record: dict[str, Any]) -> None:
        from ip2p.util.io import atomic_write_json

        atomic_write_json(self.out / name, record)

    def stage(self, name: str, fn: Callable[[], Any], *, needs_s: float = 0.0):
        if self.left() < needs_s:
            self.summary["stages"][name] = {"status": "skipped", "why": f"{self.left():.0f} s left, needs ~{needs_s:.0f} s"}
            print(f"[gpu_run] skip {name}: {self.left():.0f} s left, needs ~{needs_s:.0f} s", flush=True)
            self.write("summary.json", self.summary)
            return None
        print(f"[gpu_run] {name} ({self.left():.0f} s left)", flush=True)
        t = time.perf_counter()
        try:
            result = fn()
            self.summary["stages"][name] = {"status": "ok", "seconds": time.perf_counter() - t}
        except Exception as e:  # noqa: BLE001 - recorded; the run goes on to the next stage
            traceback.print_exc()
            result = None
            self.summary["stages"][name] = {"status": "failed", "seconds": time.perf_counter() - t,
                                            "error": f"{type(e).__name__}: {e}"}
        self.write("summary.json", self.summary)
        return result


def measure_ceilings(device: torch.device) -> dict[str, Any]:
    """A bf16 matmul's TFLOP/s and a device-to-device copy's GB/s (bytes read + written), each
    the median of 10 timed runs after 3 warm-ups, CUDA events; random data (never zeros)."""
    if device.type != "cuda":
        return {"skipped": "not a CUDA device"}

    def timed(fn, n=10):
        for _ in range(3):
            fn()
        times = []
        for _ in range(n):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) * 1e-3)
        return sorted(times)[len(times) // 2]

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_s = timed(lambda: a @ b)
    del a, b
    src = torch.randn(256 * 2**20, device=device)  # 1 GiB of float32
    dst = torch.empty_like(src)
    cp_s = timed(lambda: dst.copy_(src))
    nbytes = 2 * src.numel() * src.element_size()
    del src, dst
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": 2 * n**3 / mm_s / 1e12, "matmul": f"{n}x{n}x{n} bf16, torch @",
            "copy_gb_per_s": nbytes / cp_s / 1e9, "copy": "1 GiB float32 device-to-device, bytes read + written"}


@dataclass
class Context:
    """What the stages share: the run, the model settings and the editors built on the way."""

    run: Run
    command: str
    smoke: bool
    device: torch.device
    model: str
    res: int
    dtype_name: str
    steps: int
    batch: int
    settings: Any
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.dtype_name]


def parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU, few steps: checks the code path")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 480 s; smoke 300 s)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default 50; smoke 3)")
    ap.add_argument("--batch", type=int, default=16, help="edits per chunk in the batched stages")
    ap.add_argument("--compile", default=None, choices=["none", "default", "max-autotune"],
                    help="compile mode of the fast path (default: default on GPU, none in smoke)")
    args = ap.parse_args(argv)
    if not args.out:
        raise SystemExit("gpu_run: give --out or set $OUT")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_run: no CUDA device here; run with --smoke for the CPU dry run")
    return args


def make_context(args, command: str) -> Context:
    from ip2p.fastpath import FastPathSettings

    smoke = args.smoke
    model, res, dtype_name = ("tiny", 16, "fp32") if smoke else ("sd15", 512, "bf16")
    settings = FastPathSettings(compile=args.compile or ("none" if smoke else "default"), cuda_graphs=not smoke,
                                channels_last=True)
    run = Run(Path(args.out), args.budget_s or (300.0 if smoke else 480.0), command)
    return Context(run, command, smoke, torch.device("cpu" if smoke else "cuda"), model, res, dtype_name,
                   args.steps or (3 if smoke else 50), 4 if smoke and args.batch == 16 else args.batch, settings)


def build(ctx: Context) -> dict[str, Any]:
    """The model (random weights), diffusers' pipeline on it and the eager editor."""
    from bench.perf.editor_throughput import make_pipeline, sweep_requests
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.models import build_builtin

    c = build_builtin(ctx.model, seed=0, torch_dtype=ctx.dtype)
    ctx.state["components"] = c
    ctx.state["pipe"] = make_pipeline(c, ctx.device)
    ctx.state["editor"] = InstructPix2PixEditor(c, device=ctx.device, dtype=ctx.dtype, max_batch=ctx.batch, resize=None)
    ctx.state["requests"] = sweep_requests(ctx.batch, ctx.res)
    return {"unet_parameters": sum(p.numel() for p in c.unet.parameters())}


def prepare(ctx: Context) -> dict[str, Any]:
    """The fast editor, compiled / captured now on one short edit, so that a failure falls back
    here: first the asked settings, then the eager UNet with our CUDA-graph wrapper, then the plain
    eager UNet."""
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.fastpath import FastPathSettings

    images, instructions, s_i = ctx.state["requests"]
    tries = [ctx.settings, FastPathSettings(compile="none", cuda_graphs=not ctx.smoke, channels_last=True),
             FastPathSettings(compile="none", cuda_graphs=False, channels_last=True)]
    failures = []
    for tried in dict.fromkeys(tries):  # in order, without repeats
        try:
            fast = InstructPix2PixEditor(ctx.state["components"], device=ctx.device, dtype=ctx.dtype,
                                         max_batch=2 * ctx.batch, resize=None, fast=tried)
            fast.edit(images[:1], instructions[:1], image_guidance_scale=s_i[:1], num_inference_steps=2, seeds=[0],
                      resize=None)
            ctx.state["fast"] = fast
            return {"settings": tried.as_dict(), "fallback_from": failures}
        except Exception as e:  # noqa: BLE001 - recorded; the next, simpler settings are tried
            traceback.print_exc()
            failures.append({"settings": tried.as_dict(), "error": f"{type(e).__name__}: {e}"})
            torch._dynamo.reset()
    raise RuntimeError(f"no fast-path settings ran: {failures}")


def profile(ctx: Context, b: int, name: str, trace: bool) -> dict[str, Any]:
    """``bench.profiler`` on ``b`` edits of the fast editor (its own ``edit``, timed by regions)."""
    from bench.profiler import ProfileSpec, format_summary, profile_edit

    fast = ctx.state["fast"]
    spec = ProfileSpec(model=ctx.model, res=ctx.res, steps=ctx.steps, batch=b, dtype=ctx.dtype_name,
                       compile=fast.fast.compile, cuda_graphs=fast.fast.cuda_graphs,
                       channels_last=fast.fast.channels_last, warmup=1, repeats=3 if b == 1 else 2,
                       device=str(ctx.device), reference=True, reference_repeats=2 if b == 1 else 1,
                       trace=str(ctx.run.out / f"trace_b{b}.json.gz") if trace else None, trace_steps=3)
    r = profile_edit(spec, editor=fast, command=ctx.command + f"  [stage {name}]")
    ctx.run.write(f"{name}.json", r)
    print(format_summary(r), flush=True)
    return r


def throughput(ctx: Context) -> dict[str, Any]:
    """Edit-steps/s of the fast editor, ``batch`` edits per call and one at a time, against the pipeline."""
    from bench.perf.editor_throughput import measure_editor

    fast, s = ctx.state["fast"], ctx.run.summary
    images, instructions, s_i = ctx.state["requests"]
    ed = measure_editor(fast, images, instructions, s_i, ctx.steps, 2, ctx.device)
    one = measure_editor(fast, images[:1], instructions[:1], s_i[:1], ctx.steps, 3, ctx.device)
    pipe = s.get("pipeline")
    r = {"benchmark": "editor_throughput", "command": ctx.command + "  [stage throughput]", "model": ctx.model,
         "res": ctx.res, "dtype": ctx.dtype_name, "steps": ctx.steps, "batch": ctx.batch,
         "fast_path": fast._prepared.describe(), "pipeline": pipe, "editor": ed, "editor_single": one,
         "ratio_editor_over_pipeline": (ed["edit_steps_per_s"] / pipe["edit_steps_per_s"]) if pipe else None,
         "device": s["device"], "versions": s["versions"]}
    ctx.run.write("throughput.json", r)
    return r


def gpu_tests(ctx: Context) -> dict[str, Any]:
    """The fast path's GPU tests (CUDA graphs and compile within tolerance, a loop with no sync)."""
    import subprocess

    cmd = [sys.executable, "-m", "pytest", "tests/test_fastpath.py", "-m", "gpu", "-q", "-n", "0",
           "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30.0, ctx.run.left() - 10))
    print(proc.stdout[-4000:], proc.stderr[-2000:], flush=True)
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
            "passed": proc.returncode == 0, "tail": proc.stdout[-1500:]}


def throughput_larger(ctx: Context, tp: dict[str, Any]) -> dict[str, Any]:
    """A larger sweep chunk (2 x batch edits per call), when time is left: one more compile."""
    from bench.perf.editor_throughput import measure_editor, sweep_requests

    imgs, instr, si = sweep_requests(2 * ctx.batch, ctx.res)
    r = measure_editor(ctx.state["fast"], imgs, instr, si, ctx.steps, 2, ctx.device)
    tp["editor_larger_batch"] = r
    ctx.run.write("throughput.json", tp)
    return r


def goal_checks(ctx: Context, p1, pb, tp) -> dict[str, Any]:
    """The issue's checks: single-edit latency, batched throughput over the pipeline, roofline."""
    checks: dict[str, Any] = {}
    if p1:
        ms = p1["ms_per_step_whole"]
        checks["single_edit_ms_per_step"] = {
            "value": ms, "goal": f"<= {SINGLE_EDIT_MS_PER_STEP_GOAL}", "pass": ms <= SINGLE_EDIT_MS_PER_STEP_GOAL,
            "what": "profile_b1: whole edit (text, VAE encode, steps, VAE decode) / steps",
            "sampling_ms_per_step": p1["step"]["median_ms"],
            "eager_editor_ms_per_step": (p1.get("reference_editor_edit") or {}).get("ms_per_step")}
    if tp and tp.get("ratio_editor_over_pipeline") is not None:
        ratio, pipe_rate, larger = tp["ratio_editor_over_pipeline"], tp["pipeline"]["edit_steps_per_s"], tp.get("editor_larger_batch")
        checks["batched_over_pipeline"] = {
            "value": ratio, "goal": f">= {BATCHED_RATIO_GOAL}", "pass": ratio >= BATCHED_RATIO_GOAL,
            "what": f"fast editor, {ctx.batch} edits per call, edit-steps/s over the pipeline's one at a time",
            "editor_edit_steps_per_s": tp["editor"]["edit_steps_per_s"], "pipeline_edit_steps_per_s": pipe_rate,
            "pipeline_ms_per_step": tp["pipeline"]["ms_per_step"],
            f"ratio_at_batch_{2 * ctx.batch}": (larger["edit_steps_per_s"] / pipe_rate) if larger else None}
    ceil = (ctx.run.summary.get("ceilings") or {}).get("bf16_matmul_tflops")
    for name, rec in (("b1", p1), (f"b{ctx.batch}", pb)):
        if rec:
            checks[f"roofline_{name}"] = {
                "unet_achieved_tflops": rec["achieved_tflops_unet"], "peak_tflops": rec["peak_tflops"],
                "peak_source": rec["peak_source"], "share_of_peak": rec["roofline_share_unet"],
                "share_of_measured_matmul": (rec["achieved_tflops_unet"] / ceil) if ceil and rec["achieved_tflops_unet"] else None,
                "unet_ms_per_call": rec["components"]["unet"]["median_ms"],
                "unet_gflop_per_sample": rec["unet_gflop_per_sample"]}
    if ctx.smoke:
        checks["note"] = "smoke run (tiny model on the CPU): the figures check the code path, not the goals"
    return checks


def print_checks(checks: dict[str, Any], run: Run, seconds: float) -> None:
    print("\n[gpu_run] checks")
    for k, v in checks.items():
        if not isinstance(v, dict):
            print(f"  {k}: {v}")
            continue
        print(f"  {k}: " + ", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()
                                      if a not in ("what", "peak_source")))
    print(f"[gpu_run] done in {seconds:.0f} s; wrote {sorted(p.name for p in run.out.iterdir())}")


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m bench.perf.gpu_run " + " ".join(list(argv) if argv is not None else sys.argv[1:])
    from bench.perf.editor_throughput import measure_pipeline
    from ip2p.util.provenance import device_info, runtime_versions

    ctx = make_context(args, command)
    run, s = ctx.run, ctx.run.summary
    s.update({"smoke": ctx.smoke, "model": ctx.model, "res": ctx.res, "dtype": ctx.dtype_name, "steps": ctx.steps,
              "batch": ctx.batch, "fast_path": ctx.settings.as_dict(), "device": device_info(ctx.device),
              "versions": runtime_versions()})
    s["ceilings"] = run.stage("ceilings", lambda: measure_ceilings(ctx.device))
    s["model_info"] = run.stage("build", lambda: build(ctx))
    if "editor" not in ctx.state:
        return 1
    images, instructions, _ = ctx.state["requests"]
    s["pipeline"] = run.stage("pipeline", lambda: measure_pipeline(ctx.state["pipe"], images, instructions, ctx.steps,
                                                                    2 if ctx.smoke else 3, ctx.device), needs_s=30)
    s["prepare"] = run.stage("prepare (compile, batch 1)", lambda: prepare(ctx), needs_s=60)
    if "fast" not in ctx.state:
        return 1
    p1 = run.stage("profile_b1", lambda: profile(ctx, 1, "profile_b1", trace=True), needs_s=40)
    pb = run.stage(f"profile_b{ctx.batch}", lambda: profile(ctx, ctx.batch, f"profile_b{ctx.batch}", trace=False),
                   needs_s=120)
    tp = run.stage("throughput", lambda: throughput(ctx), needs_s=60)
    if not ctx.smoke:
        s["gpu_tests"] = run.stage("gpu_tests", lambda: gpu_tests(ctx), needs_s=90)
    if tp is not None:
        run.stage(f"throughput_b{2 * ctx.batch}", lambda: throughput_larger(ctx, tp),
                  needs_s=150 if not ctx.smoke else 10)
    s["checks"] = goal_checks(ctx, p1, pb, tp)
    s["seconds"] = time.perf_counter() - run.t0
    run.write("summary.json", s)
    print_checks(s["checks"], run, s["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
