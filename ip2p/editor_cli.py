"""`ip2p edit`: edit one image from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("edit")(edit_command)


def edit_command(
    image: Path = typer.Argument(..., help="Input image file."),
    instruction: str = typer.Option(..., "--instruction", "-i", help="The edit instruction ('' returns the resized input)."),
    model: str = typer.Option("world:ip2p", "--model", "-m", help="world:ip2p, tiny, sd15, a diffusers folder or hub id, or a single-file checkpoint."),
    image_guidance: float = typer.Option(1.5, "--image-guidance", help="sI, image guidance scale."),
    text_guidance: float = typer.Option(7.5, "--text-guidance", help="sT, text guidance scale."),
    steps: int = typer.Option(100, "--steps", help="Sampling steps."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (torch.Generator().manual_seed(seed), as diffusers)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output PNG (default: <input>_edited.png)."),
    resize: str = typer.Option("paper", "--resize", help="paper | diffusers | none"),
    scheduler: str = typer.Option("paper", "--scheduler", help="paper (Euler ancestral, discrete sigmas) or a diffusers scheduler class name."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16"),
    config: Optional[str] = typer.Option(None, "--config", help="For single-file checkpoints: a diffusers folder/hub id giving the architecture."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading .ckpt pickles (only from sources you trust)."),
) -> None:
    """Edit IMAGE by an instruction with InstructPix2Pix and write a PNG."""
    import torch

    from ip2p.editor import load_editor
    from ip2p.util.io import load_image, save_image

    x = load_image(image, what="input image")  # clear error for missing/undecodable files
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise typer.BadParameter(f"--dtype must be one of {sorted(dtypes)}")
    editor = load_editor(model, device=device, dtype=dtypes[dtype], config=config, trust_pickle=trust_pickle)
    y = editor.edit(
        x, instruction, image_guidance_scale=image_guidance, guidance_scale=text_guidance,
        num_inference_steps=steps, seeds=seed, resize=None if resize == "none" else resize,
        scheduler=None if scheduler == "paper" else scheduler, progress=True,
    )[0]
    out = out or image.with_name(f"{image.stem}_edited.png")
    save_image(y, out)
    typer.echo(f"wrote {out} ({y.shape[2]}x{y.shape[1]}) model={model} sI={image_guidance} sT={text_guidance} steps={steps} seed={seed}")
