"""The one protocol every editing method follows (DESIGN.md, "The one protocol").

A method declares its knobs with defaults and edits a batch of requests; the harness knows
nothing else about it. Requests in one batch may carry different knob values and seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch


@dataclass(frozen=True)
class EditRequest:
    """One edit: the input image ``[3, H, W]`` float in [0, 1] and everything a method may use.

    ``knobs`` overrides the method's defaults for this request only; ``seed`` fixes its noise.
    Captions are optional: InstructPix2Pix ignores them, SDEdit uses ``output_caption``,
    Text2Live-style methods use both.
    """

    image: torch.Tensor
    instruction: str
    input_caption: str = ""
    output_caption: str = ""
    knobs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    item_id: str = ""


@runtime_checkable
class Editor(Protocol):
    """An editing method. ``knobs`` maps knob names to defaults (e.g. image_guidance_scale)."""

    name: str
    knobs: Mapping[str, Any]

    def identity(self) -> dict[str, Any]:
        """What the outputs depend on besides the request: method, weights hash, settings."""
        ...

    def run(self, requests: Sequence[EditRequest]) -> list[torch.Tensor]:
        """Edit every request; one ``[3, H, W]`` float tensor in [0, 1] per request, in order,
        at the input's processed size. Output for a request never depends on its batch mates."""
        ...


def resolve_knobs(defaults: Mapping[str, Any], given: Mapping[str, Any], *, method: str) -> dict[str, Any]:
    """Merge ``given`` over ``defaults``; an unknown knob name is an error naming the method."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        from ip2p.errors import SpecError

        raise SpecError(
            f"method {method!r} has no knob {unknown[0]!r}; its knobs are {sorted(defaults)}"
        )
    out = dict(defaults)
    out.update(given)
    return out
