"""Exponential moving average of trained weights, with the LDM warm-up:
decay_n = min(max_decay, (1 + n) / (10 + n)) at the n-th update (n = 1, 2, ...), and
shadow <- decay_n * shadow + (1 - decay_n) * param. Kept in float32; checkpointable through
``state_dict`` / ``load_state_dict`` (``accelerator.register_for_checkpointing``).
"""
from __future__ import annotations

from typing import Iterable

import torch


def ema_decay(n: int, max_decay: float = 0.9999) -> float:
    """The decay used at the n-th update (n counted from 1)."""
    return min(max_decay, (1.0 + n) / (10.0 + n))


class EMA:
    def __init__(self, parameters: Iterable[torch.nn.Parameter], max_decay: float = 0.9999):
        self.max_decay = float(max_decay)
        self.num_updates = 0
        self.shadow = [p.detach().clone().float() for p in parameters]

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> float:
        self.num_updates += 1
        d = ema_decay(self.num_updates, self.max_decay)
        for s, p in zip(self.shadow, parameters, strict=True):
            s.mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        return d

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, parameters, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict:
        return {"max_decay": self.max_decay, "num_updates": self.num_updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        self.max_decay = float(state["max_decay"])
        self.num_updates = int(state["num_updates"])
        for s, t in zip(self.shadow, state["shadow"]):
            s.copy_(t)
