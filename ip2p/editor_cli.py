"""`ip2p edit`: edit one image from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ip2p.core import RESIZE_MODES as _MODES
from ip2p.editor import InstructPix2PixEditor

# option defaults read from the method's knob declarations (the one place they are written)
_DEFAULTS = InstructPix2PixEditor.knobs
RESIZE_MODES = tuple("none" if m is None else m for m in _MODES)  # the CLI spells null "none"


def register(app: typer.Typer) -> None:
    app.command("edit")(edit_command)


def edit_command(
    image: Path = typer.Argument(..., help="Input image file."),
    instruction: str = typer.Option(..., "--instruction", "-i", help="The edit instruction ('' returns the resized input)."),
    model: str = typer.Option("world:ip2p", "--model", "-m", help="world:ip2p, tiny, sd15, a diffusers folder or hub id, or a single-file checkpoint."),
    image_guidance: float = typer.Option(_DEFAULTS["image_guidance_scale"], "--image-guidance", help="sI, image guidance scale."),
    text_guidance: float = typer.Option(_DEFAULTS["guidance_scale"], "--text-guidance", help="sT, text guidance scale."),
    steps: int = typer.Option(_DEFAULTS["num_inference_steps"], "--steps", help="Sampling steps."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (torch.Generator().manual_seed(seed), as diffusers)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output PNG (default: <input>_edited.png)."),
    resize: str = typer.Option(_DEFAULTS["resize"], "--resize", help=" | ".join(RESIZE_MODES)),
    scheduler: str = typer.Option("paper", "--scheduler", help="paper (Euler ancestral, discrete sigmas) or a diffusers scheduler class name."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16"),
    config: Optional[str] = typer.Option(None, "--config", help="For single-file checkpoints: a diffusers folder/hub id giving the architecture."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading .ckpt pickles (only from sources you trust)."),
) -> None:
    """Edit IMAGE by an instruction with InstructPix2Pix and write a PNG."""
    out = out or image.with_name(f"{image.stem}_edited.png")
    check_edit_options(steps=steps, image_guidance=image_guidance, text_guidance=text_guidance, seed=seed,
                       resize=resize, dtype=dtype, out=out)
    import torch

    from ip2p.util.io import load_image, save_image

    x = load_image(image, what="input image")  # clear error for missing/undecodable files
    check_scheduler_name(scheduler)
    if device is not None:
        from ip2p.util.devices import check_device

        check_device(device, "--device")
    from ip2p.editor import load_editor

    editor = load_editor(model, device=device, dtype=DTYPES[dtype](torch), config=config, trust_pickle=trust_pickle)
    y = editor.edit(
        x, instruction, image_guidance_scale=image_guidance, guidance_scale=text_guidance,
        num_inference_steps=steps, seeds=seed, resize=None if resize == "none" else resize,
        scheduler=None if scheduler == "paper" else scheduler, progress=True,
    )[0]
    save_image(y, out)
    typer.echo(f"wrote {out} ({y.shape[2]}x{y.shape[1]}) model={model} sI={image_guidance} sT={text_guidance} steps={steps} seed={seed}")


DTYPES = {"float32": lambda torch: torch.float32, "float16": lambda torch: torch.float16,
          "bfloat16": lambda torch: torch.bfloat16}
SEED_MAX = 2**63 - 1


def check_edit_options(*, steps: int, image_guidance: float, text_guidance: float, seed: int, resize: str,
                       dtype: str, out: Path) -> None:
    """Every ``ip2p edit`` option that can be checked without a model, as one-line ``SpecError``s; the
    knobs are checked against InstructPix2Pix's own declarations (``declared_knobs``)."""
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.errors import SpecError

    declared = InstructPix2PixEditor.declared_knobs
    for option, knob, value in (("--steps", "num_inference_steps", steps),
                                ("--image-guidance", "image_guidance_scale", image_guidance),
                                ("--text-guidance", "guidance_scale", text_guidance)):
        why = declared[knob].check(value)
        if why:
            raise SpecError(f"{option} {value}: {why} ({declared[knob].doc}; default {declared[knob].default})")
    if not 0 <= seed <= SEED_MAX:
        raise SpecError(f"--seed {seed}: must be in 0..{SEED_MAX} (2**63-1, the seeds torch.Generator takes)")
    if resize not in RESIZE_MODES:
        raise SpecError(f"--resize {resize!r}: must be one of {', '.join(RESIZE_MODES)}")
    if dtype not in DTYPES:
        raise SpecError(f"--dtype {dtype!r}: must be one of {', '.join(DTYPES)}")
    from ip2p.util.io import check_output_path

    check_output_path(out, option="--out", kind="file")


def check_scheduler_name(scheduler: str) -> None:
    """``paper`` or the class name of a diffusers scheduler (checked before any model loads), by the
    editor's own declaration of its ``scheduler`` knob."""
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.errors import SpecError

    why = InstructPix2PixEditor.declared_knobs["scheduler"].check(scheduler)
    if why:
        raise SpecError(f"--scheduler {scheduler!r}: {why}")
