"""The record every reader yields, for training pairs and test items alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class EditExample:
    """One editing example.

    ``input_image`` / ``target_image`` are float ``[3, H, W]`` in [0, 1], or callables that
    load them lazily (so readers stay cheap until an image is needed). ``mask`` is a bool
    ``[H, W]`` tensor, True where the edit should change pixels. ``source`` names where the row
    came from (file path and row number) so errors can point at it.
    """

    item_id: str
    instruction: str
    input_image: torch.Tensor | Callable[[], torch.Tensor]
    input_caption: str = ""
    output_caption: str = ""
    target_image: torch.Tensor | Callable[[], torch.Tensor] | None = None
    mask: torch.Tensor | Callable[[], torch.Tensor] | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def load_input(self) -> torch.Tensor:
        return _materialise(self.input_image)

    def load_target(self) -> torch.Tensor | None:
        return None if self.target_image is None else _materialise(self.target_image)

    def load_mask(self) -> torch.Tensor | None:
        return None if self.mask is None else _materialise(self.mask)


def _materialise(x):
    return x() if callable(x) else x
