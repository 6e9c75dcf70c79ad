"""Process placement of a sweep under ``torchrun`` / ``accelerate launch``: this process's rank and
world size from the launcher's environment, its device, and the process group of the final barrier.
A plain ``python`` process is rank 0 of 1 and needs none of it."""
from __future__ import annotations

import os

import torch

from ip2p.errors import SpecError


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun / accelerate environment variables."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < world:
        raise SpecError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, local


def pick_device(requested: str, local_rank: int) -> str:
    """``requested``, or for ``auto`` this local rank's GPU (the CPU when there is none)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


def maybe_init_distributed(world_size: int):
    """A gloo process group for the final barrier when launched by torchrun / accelerate."""
    if world_size <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist


__all__ = ["dist_env", "pick_device", "maybe_init_distributed"]
