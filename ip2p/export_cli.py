"""`ip2p export`: write a model as one original-layout (LDM/CompVis) InstructPix2Pix checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


def export_command(
    model: str = typer.Argument(..., help="tiny, sd15, world:<name>, a diffusers folder or hub id, or a single-file checkpoint."),
    out: Path = typer.Argument(..., help="Output file: .safetensors (recommended) or .ckpt (a pickle)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16 (floating tensors are cast)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights of a built-in architecture."),
    config: Optional[str] = typer.Option(None, "--config", help="For a single-file MODEL: a diffusers folder/hub id or built-in name giving the architecture."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow reading a .ckpt MODEL (only from sources you trust)."),
) -> None:
    """Write MODEL as one checkpoint in the layout of the original InstructPix2Pix release
    (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*)."""
    import torch

    from ip2p.errors import Ip2pError
    from ip2p.export import export_single_file
    from ip2p.models import load_components

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise Ip2pError(f"--dtype must be one of {sorted(dtypes)}")
    if out.suffix not in (".safetensors", ".ckpt"):
        raise Ip2pError(f"OUT must end in .safetensors or .ckpt, got {out.name!r}")
    c = load_components(model, seed=seed, config=config, trust_pickle=trust_pickle)
    path = export_single_file(c, out, dtype=dtypes[dtype])
    hint = f" --config {model}" if model in ("tiny", "sd15") else " --config <diffusers folder of the same architecture>"
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {dtype}); load it with: ip2p edit ... --model {path}{hint}")
