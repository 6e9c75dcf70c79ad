"""`ip2p profile`: per-component latency of an InstructPix2Pix edit (see ``bench.profiler``)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_command)


def profile_command(
    model: str = typer.Option("tiny", "--model", "-m", help="sd15, tiny, world:ip2p, a diffusers folder or hub id, a single file."),
    res: Optional[int] = typer.Option(None, "--res", help="Image side in pixels (default: the model's native resolution)."),
    steps: int = typer.Option(20, "--steps", help="Sampling steps per edit."),
    batch: int = typer.Option(1, "--batch", help="Edits per chunk (one UNet call is 3 x batch samples)."),
    dtype: str = typer.Option("fp32", "--dtype", help="bf16 | fp16 | fp32"),
    compile: str = typer.Option("none", "--compile", help="none | default | max-autotune (torch.compile of the UNet)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Replay CUDA graphs for the static-shape UNet calls (CUDA only)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last UNet weights and inputs."),
    sdpa: bool = typer.Option(True, "--sdpa/--no-sdpa", help="Set diffusers' AttnProcessor2_0 (scaled_dot_product_attention)."),
    warmup: int = typer.Option(1, "--warmup", help="Uninstrumented edits before timing (compilation happens here)."),
    repeats: int = typer.Option(5, "--repeats", help="Timed rounds (each: one whole edit, one edit timed per component)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights of built-in models, images and noise."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="Device peak TFLOP/s for the roofline share (default: the datasheet table)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time editor.edit (the eager editor) on the same requests."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write a torch.profiler Chrome trace of one edit here (.json or .json.gz)."),
    trace_steps: Optional[int] = typer.Option(None, "--trace-steps", help="Steps of the traced edit (default: --steps; a trace grows with steps)."),
    reference_repeats: int = typer.Option(3, "--reference-repeats", help="Timed editor.edit calls for the reference."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result record as JSON here."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="Profile a diffusers editing pipeline by its own code: "
                                           "'auto' (the class in model_index.json) or a class name, e.g. FluxKontextPipeline "
                                           "(automatic for a folder of another editing pipeline); see bench.pipeline_profile."),
) -> None:
    """Time each component of an edit (text encoding, VAE encode, UNet step with its 3-way guidance
    batch, guidance arithmetic, sampler update, VAE decode): median, p10, p90, peak memory,
    achieved TFLOP/s and roofline share; optional torch.profiler trace."""
    from bench.profiler import ProfileSpec, format_summary, profile_edit, write_record

    if pipeline or _is_other_pipeline(model):
        return _profile_pipeline(model, pipeline, res, steps, batch, dtype, device, warmup, repeats, seed, out)
    spec = ProfileSpec(model=model, res=res, steps=steps, batch=batch, dtype=dtype, compile=compile,
                       cuda_graphs=cuda_graphs, channels_last=channels_last, sdpa=sdpa, warmup=warmup, repeats=repeats,
                       seed=seed, device=device, peak_tflops=peak_tflops, reference=reference,
                       reference_repeats=reference_repeats, trace=str(trace) if trace else None, trace_steps=trace_steps)
    command = "ip2p " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["profile"] else None
    record = profile_edit(spec, command=command or _command_from(spec, out), progress=progress)
    typer.echo(format_summary(record))
    if out:
        write_record(record, out)
        typer.echo(f"wrote {out}")


def _is_other_pipeline(model: str) -> bool:
    """A local folder whose model_index.json names an editing pipeline other than InstructPix2Pix."""
    from pathlib import Path as _P

    from ip2p.models import pipeline_class_name, resolve_source

    if not (_P(resolve_source(model)) / "model_index.json").is_file():
        return False
    return pipeline_class_name(model) != "StableDiffusionInstructPix2PixPipeline"


def _profile_pipeline(model, pipeline, res, steps, batch, dtype, device, warmup, repeats, seed, out) -> None:
    from bench.pipeline_profile import format_pipeline_summary, profile_pipeline
    from bench.profiler import write_record

    command = "ip2p " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["profile"] else None
    record = profile_pipeline(model, pipeline=pipeline, res=res, steps=steps, batch=batch, dtype=dtype, device=device,
                              warmup=warmup, repeats=repeats, seed=seed, command=command)
    typer.echo(format_pipeline_summary(record))
    if out:
        write_record(record, out)
        typer.echo(f"wrote {out}")


def _command_from(spec, out) -> str:
    """The equivalent command line (when called from Python rather than the console script)."""
    parts = ["ip2p", "profile", "--model", spec.model, "--steps", str(spec.steps), "--batch", str(spec.batch),
             "--dtype", spec.dtype, "--compile", spec.compile]
    if spec.res:
        parts += ["--res", str(spec.res)]
    parts += [f for f, on in (("--cuda-graphs", spec.cuda_graphs), ("--channels-last", spec.channels_last),
                              ("--no-sdpa", not spec.sdpa), ("--no-reference", not spec.reference)) if on]
    parts += ["--warmup", str(spec.warmup), "--repeats", str(spec.repeats), "--seed", str(spec.seed)]
    for flag, v in (("--device", spec.device), ("--peak-tflops", spec.peak_tflops), ("--trace", spec.trace),
                    ("--trace-steps", spec.trace_steps), ("--out", out)):
        if v is not None:
            parts += [flag, str(v)]
    return " ".join(shlex.quote(p) for p in parts)
