"""Torch devices named by users (CLI options, specs): refused with one clear line when this machine
does not have them, before any model loads."""
from __future__ import annotations

import torch

from ip2p.errors import SpecError


def check_device(device: str, field: str = "device") -> None:
    """Refuse a torch device this machine does not have, before any model loads."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise SpecError(f"{field} {device!r}: not a torch device ({e}); use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"{field} {device!r}: CUDA is not available on this machine; use cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpecError(f"{field} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SpecError(f"{field} {device!r}: MPS is not available on this machine; use cpu (or auto)")
    elif dev.type != "cpu":
        raise SpecError(f"{field} {device!r}: unsupported device type {dev.type!r}; use cpu, cuda, cuda:N or auto")
