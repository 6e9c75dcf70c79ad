"""Writing models in the original single-file layout of the InstructPix2Pix release
(``instruct-pix2pix-00-22000.safetensors``): ``export_single_file``. The key layout itself lives in
``ip2p.ldm_layout``; the weight-free config folders diffusers needs to read such a file offline in
``ip2p.builtin``."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ip2p.builtin import builtin_config_dir, write_diffusers_config
from ip2p.util.io import current_umask
from ip2p.ldm_layout import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    check_single_file,
    expected_ldm_shapes,
    ldm_state_dict,
    unet_key_map,
    vae_key_map,
)


def export_single_file(components_or_pipe, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``components_or_pipe`` as one original-layout checkpoint: ``.safetensors`` (safetensors)
    or ``.ckpt``/``.pt``/``.pth`` (``torch.save({"state_dict": ...})``, a pickle). Returns the path.
    Load it back with ``ip2p.models.load_single_file(path, config=...)``."""
    p = Path(path)
    sd = ldm_state_dict(components_or_pipe, dtype=dtype)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())  # the user's umask, not mkstemp's private 0600
    os.close(fd)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, tmp, metadata={"format": "pt", "layout": "ldm", "writer": "ip2p.export"})
        elif p.suffix in (".ckpt", ".pt", ".pth"):
            torch.save({"state_dict": sd}, tmp)
        else:
            raise ValueError(f"{p}: unknown checkpoint suffix {p.suffix!r}; use .safetensors or .ckpt")
        os.chmod(tmp, 0o666 & ~current_umask())  # again: safetensors writes a new private (0600) file
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


__all__ = [
    "export_single_file",
    "ldm_state_dict",
    "expected_ldm_shapes",
    "check_single_file",
    "unet_key_map",
    "vae_key_map",
    "write_diffusers_config",
    "builtin_config_dir",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "TEXT_PREFIX",
]
