"""GPU benchmark: edit-steps per second of diffusers' InstructPix2Pix pipeline, one edit at a time,
against ip2p's editor with many edits per call, measured in the same run.

    python -m bench.perf.editor_throughput --model sd15 --res 512 --dtype bf16 --batch 16 \
        --steps 20 --fast --compile-mode default --cuda-graphs --channels-last \
        --out results/perf/editor_throughput.json

Both sides use the same random-weight components (``--model``), the same dtype and resolution.
The pipeline is timed per edit (its ``__call__`` on one image, Euler ancestral scheduler), before
anything prepares the UNet for the editor. The editor is timed per call of ``--batch`` edits with
distinct knob values (sI varies across the batch, so the batch is a real sweep, not one setting
repeated): ``editor.edit`` as it is (``--compile`` compiles its UNet), or with ``--fast`` the fast
path (``ip2p.fastpath.FastEditPath``: the paper's sampler with everything made ahead, SDPA,
optional channels-last, compile mode and CUDA graphs). ``--single`` also times the editor on one
edit (ms per step: the latency figure). An edit-step is one sampling step of one edit; every side
includes text encoding, VAE encode/decode and sampling.

Runs on the CPU too (``--model tiny --res 16 --device cpu``: the CPU suite in bench/perf uses
that to keep this script working); its figures are only meaningful on a GPU.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of ``fn`` (host clock, device synchronised around each call)."""
    out = []
    for k in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn(k)
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def make_pipeline(components, device: torch.device):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    c = components
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sweep_requests(batch: int, res: int, seed: int = 0):
    """``batch`` requests: random images, distinct instructions, sI cycling over 1.0..1.7."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, res, res, generator=g)
    instructions = [f"edit number {i}" for i in range(batch)]
    image_guidance = [1.0 + 0.1 * (i % 8) for i in range(batch)]
    return images, instructions, image_guidance


def measure_pipeline(pipe, images, instructions, steps: int, edits: int, device: torch.device) -> dict[str, Any]:
    """diffusers' pipeline, one edit per call (after one warm-up edit)."""
    n = len(images)

    def run(i):
        pipe(instructions[i % n], image=images[i % n][None], num_inference_steps=steps, guidance_scale=7.5,
             image_guidance_scale=1.5, generator=torch.Generator().manual_seed(i), output_type="pt")

    run(0)
    times = _timed(lambda k: run(k + 1), edits, device)
    s = sum(times) / len(times)
    return {"what": "StableDiffusionInstructPix2PixPipeline.__call__, one edit per call", "edits": edits,
            "s_per_edit": s, "ms_per_step": 1e3 * s / steps, "edit_steps_per_s": steps / s, "times_s": times}


def measure_editor(editor, images, instructions, image_guidance, steps: int, calls: int, device: torch.device, *,
                   fast=None, scheduler=None) -> dict[str, Any]:
    """The editor on ``len(images)`` edits per call (after one warm-up call, which compiles)."""
    batch = len(images)

    def run(k):
        seeds = [k * 1000 + i for i in range(batch)]
        if fast is not None:
            out = fast.edit(images, instructions, image_guidance_scale=image_guidance, guidance_scale=7.5,
                            num_inference_steps=steps, seeds=seeds)
        else:
            out = editor.edit(images, instructions, image_guidance_scale=image_guidance, guidance_scale=7.5,
                              num_inference_steps=steps, seeds=seeds, scheduler=scheduler, resize=None)
        return out

    t0 = time.perf_counter()
    run(0)
    _sync(device)
    warm_s = time.perf_counter() - t0
    times = _timed(lambda k: run(k + 1), calls, device)
    s = sum(times) / len(times)
    return {"what": ("FastEditPath.edit" if fast is not None else "editor.edit") + f", {batch} edits per call",
            "batch": batch, "calls": calls, "s_per_call": s, "ms_per_step": 1e3 * s / steps,
            "edit_steps_per_s": batch * steps / s, "warmup_s": warm_s, "times_s": times}


def environment(device: torch.device) -> dict[str, Any]:
    """The device and versions of a throughput record (``ip2p.util.provenance``)."""
    from ip2p.util.provenance import device_info, runtime_versions

    v = runtime_versions()
    return {"device": device_info(device)["name"], "torch": v["torch"], "cuda": torch.version.cuda, "ip2p": v["ip2p"],
            "diffusers": v["diffusers"], "python": v["python"]}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--batch", type=int, default=16, help="edits per editor call")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pipe-edits", type=int, default=3, help="timed pipeline edits (one at a time)")
    ap.add_argument("--editor-calls", type=int, default=2, help="timed editor calls")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (same as --compile-mode default)")
    ap.add_argument("--compile-mode", default=None, choices=["none", "default", "max-autotune"])
    ap.add_argument("--fast", action="store_true", help="time the fast path (ip2p.fastpath) instead of editor.edit")
    ap.add_argument("--cuda-graphs", action="store_true", help="with --fast: CUDA graphs for the UNet")
    ap.add_argument("--channels-last", action="store_true", help="with --fast: channels-last UNet")
    ap.add_argument("--single", action="store_true", help="also time the editor on a single edit (latency)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    return ap


def main(argv=None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.fastpath import FastEditPath, FastPathSettings
    from ip2p.models import build_builtin

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    mode = args.compile_mode or ("default" if args.compile else "none")
    if (args.cuda_graphs or args.channels_last) and not args.fast:
        raise SystemExit("--cuda-graphs and --channels-last apply to the fast path: add --fast")
    c = build_builtin(args.model, seed=0, torch_dtype=dtype)
    pipe = make_pipeline(c, device)
    images, instructions, image_guidance = sweep_requests(args.batch, args.res)

    pipe_r = measure_pipeline(pipe, images, instructions, args.steps, args.pipe_edits, device)
    editor = InstructPix2PixEditor(c, device=device, dtype=dtype, max_batch=args.batch,
                                   compile=(mode != "none" and not args.fast))
    fast = None
    if args.fast:
        fast = FastEditPath(editor, FastPathSettings(compile=mode, cuda_graphs=args.cuda_graphs,
                                                     channels_last=args.channels_last))
    ed_r = measure_editor(editor, images, instructions, image_guidance, args.steps, args.editor_calls, device,
                          fast=fast, scheduler=pipe.scheduler)
    single = None
    if args.single:
        single = measure_editor(editor, images[:1], instructions[:1], image_guidance[:1], args.steps,
                                args.editor_calls, device, fast=fast, scheduler=pipe.scheduler)
    ratio = ed_r["edit_steps_per_s"] / pipe_r["edit_steps_per_s"]
    cmd_args = argv if argv is not None else sys.argv[1:]
    result = {
        "benchmark": "editor_throughput",
        "command": "python -m bench.perf.editor_throughput " + " ".join(shlex.quote(a) for a in cmd_args),
        "model": args.model, "res": args.res, "dtype": args.dtype, "steps": args.steps, "batch": args.batch,
        "compile_mode": mode, "fast": args.fast, "fast_path": fast.unet.describe() if fast else None,
        "pipeline": pipe_r, "editor": ed_r, "editor_single": single,
        # flat figures, as earlier versions of this file wrote them
        "pipeline_s_per_edit": pipe_r["s_per_edit"], "pipeline_edit_steps_per_s": pipe_r["edit_steps_per_s"],
        "editor_s_per_call": ed_r["s_per_call"], "editor_edit_steps_per_s": ed_r["edit_steps_per_s"],
        "ratio_editor_over_pipeline": ratio,
        **environment(device),
    }
    print(f"diffusers pipeline, one edit at a time: {pipe_r['edit_steps_per_s']:8.2f} edit-steps/s "
          f"({pipe_r['ms_per_step']:.1f} ms/step)")
    print(f"ip2p editor{' (fast path)' if fast else ''}, {args.batch} edits per call: "
          f"{ed_r['edit_steps_per_s']:8.2f} edit-steps/s")
    if single:
        print(f"ip2p editor{' (fast path)' if fast else ''}, single edit: {single['ms_per_step']:.2f} ms/step")
    print(f"ratio: {ratio:.2f}x   [{result['device']}, {args.model} {args.res}px {args.dtype} compile={mode}"
          f"{' cuda-graphs' if args.cuda_graphs else ''}{' channels-last' if args.channels_last else ''}]")
    if args.out:
        from ip2p.util.io import atomic_write_json

        atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
