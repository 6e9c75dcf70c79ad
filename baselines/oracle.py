"""The oracle editor: every edit is the item's exact target (processed like the input). The ceiling
beside the identity editor's floor: on the small world, where each item knows its right answer, it
scores what a perfect editor would (edit success 1, L1 to the target 0). An item without a target
is refused with an error naming it."""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import torch

from ip2p.core import process_input
from ip2p.errors import SpecError
from ip2p.protocol import EditRequest, Knob, knob_defaults, resolve_knobs, who
from ip2p.registry import register_method


class OracleEditor:
    """Returns each request's ``target``, processed as InstructPix2Pix's ``paper`` resize or as given."""

    name = "oracle"
    declared_knobs: Mapping[str, Knob] = {
        "resize": Knob("choice", default=None, choices=("paper", None),
                       doc="null: the target as given; paper: InstructPix2Pix's resize to `resolution`"),
    }
    knobs: Mapping[str, Any] = knob_defaults(declared_knobs)

    def __init__(self, *, resolution: int = 512):
        self.resolution = int(resolution)

    def identity(self) -> dict[str, Any]:
        return {"method": self.name, "weights_hash": hashlib.sha256(b"oracle-editor-v1").hexdigest()[:16],
                "resolution": self.resolution}

    def _knobs(self, request: EditRequest, index: int = 0) -> dict[str, Any]:
        return resolve_knobs(self.declared_knobs, request.knobs, method=self.name, item_id=request.item_id, index=index)

    def metric_input(self, request: EditRequest) -> torch.Tensor:
        return process_input(request.image, self._knobs(request)["resize"], self.resolution)

    def run(self, requests: Sequence[EditRequest], **kwargs) -> list[torch.Tensor]:
        out = []
        for i, r in enumerate(requests):
            target = r.target() if callable(r.target) else r.target
            if target is None:
                raise SpecError(f"oracle: {who(r.item_id, i)} has no target image; the oracle needs data with exact "
                                "targets (the small world, or a test set with target images)")
            if isinstance(r.image, torch.Tensor) and tuple(target.shape) != tuple(r.image.shape):
                raise SpecError(f"oracle: {who(r.item_id, i)}: target shape {tuple(target.shape)} differs from the "
                                f"input's {tuple(r.image.shape)}")
            out.append(process_input(target, self._knobs(r, i)["resize"], self.resolution))
        return out


register_method("oracle", lambda model=None, device=None, **options: OracleEditor(**options),
                editor_class=OracleEditor, default_model=None,
                description="oracle: the item's exact target (the ceiling beside identity; needs data with targets)")

__all__ = ["OracleEditor"]
