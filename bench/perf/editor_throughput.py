"""GPU benchmark (never in CI): edit-steps per second of diffusers' InstructPix2Pix pipeline,
one edit at a time, against ip2p's editor with many edits per call, measured in the same run.

    python -m bench.perf.editor_throughput --model sd15 --res 512 --dtype bf16 --batch 16 \
        --steps 20 --out results/perf/editor_throughput.json

Both sides use the same random-weight `sd15` components, the same dtype and the same Euler
ancestral scheduler; the pipeline is timed per edit (its `__call__` on one image), the editor
per call of `--batch` edits with distinct knob values (sI varies across the batch, so the
batch is a real sweep, not one setting repeated). An edit-step is one sampling step of one
edit; both sides include text encoding, VAE encode/decode and sampling.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--batch", type=int, default=16, help="edits per editor call")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pipe-edits", type=int, default=3, help="timed pipeline edits (one at a time)")
    ap.add_argument("--editor-calls", type=int, default=2, help="timed editor calls")
    ap.add_argument("--compile", action="store_true", help="torch.compile the editor's UNet")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from diffusers import StableDiffusionInstructPix2PixPipeline

    import ip2p
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.models import build_builtin

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    c = build_builtin(args.model, seed=0, torch_dtype=dtype)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.res, args.res, generator=g)
    instr = [f"edit number {i}" for i in range(args.batch)]

    def run_pipe(i):
        pipe(instr[i % args.batch], image=images[i % args.batch][None], num_inference_steps=args.steps,
             guidance_scale=7.5, image_guidance_scale=1.5, generator=torch.Generator().manual_seed(i), output_type="pt")

    run_pipe(0)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for i in range(args.pipe_edits):
        run_pipe(i)
    _sync(device)
    pipe_s = (time.perf_counter() - t0) / args.pipe_edits
    pipe_rate = args.steps / pipe_s

    editor = InstructPix2PixEditor(c, device=device, dtype=dtype, max_batch=args.batch, compile=args.compile)
    s_i = [1.0 + 0.1 * (i % 8) for i in range(args.batch)]
    sched = pipe.scheduler

    def run_editor(k):
        editor.edit(images, instr, image_guidance_scale=s_i, guidance_scale=7.5, num_inference_steps=args.steps,
                    seeds=[k * 1000 + i for i in range(args.batch)], scheduler=sched, resize=None)

    run_editor(0)  # warm-up (and compilation)
    _sync(device)
    t0 = time.perf_counter()
    for k in range(args.editor_calls):
        run_editor(k + 1)
    _sync(device)
    ed_s = (time.perf_counter() - t0) / args.editor_calls
    ed_rate = args.batch * args.steps / ed_s

    result = {
        "benchmark": "editor_throughput",
        "command": "python -m bench.perf.editor_throughput " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "model": args.model, "res": args.res, "dtype": args.dtype, "steps": args.steps, "batch": args.batch,
        "compile": args.compile,
        "pipeline_s_per_edit": pipe_s, "pipeline_edit_steps_per_s": pipe_rate,
        "editor_s_per_call": ed_s, "editor_edit_steps_per_s": ed_rate,
        "ratio_editor_over_pipeline": ed_rate / pipe_rate,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "ip2p": ip2p.__version__,
        "diffusers": __import__("diffusers").__version__,
    }
    print(f"diffusers pipeline, one edit at a time: {pipe_rate:8.2f} edit-steps/s ({pipe_s * 1000 / args.steps:.1f} ms/step)")
    print(f"ip2p editor, {args.batch} edits per call:     {ed_rate:8.2f} edit-steps/s")
    print(f"ratio: {ed_rate / pipe_rate:.2f}x   [{result['device']}, {args.model} {args.res}px {args.dtype}"
          f"{' compiled' if args.compile else ''}]")
    if args.out:
        from ip2p.util.io import atomic_write_json

        atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
