"""The identity editor: every edit is its input (as processed). The floor every method is compared with
on preservation, and the ceiling it must beat on edits: its L1 to the exact target is exactly the
size of the edit (it never pays the VAE round trip)."""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import torch

from ip2p.core import process_input, resize_knob
from ip2p.protocol import EditRequest, Knob, knob_defaults, resolve_knobs
from ip2p.registry import register_method


class IdentityEditor:
    """Returns each request's input, processed as InstructPix2Pix's ``paper`` resize or as given."""

    name = "identity"
    declared_knobs: Mapping[str, Knob] = {
        "resize": resize_knob(None, ("paper", None)),
    }
    knobs: Mapping[str, Any] = knob_defaults(declared_knobs)

    def __init__(self, *, resolution: int = 512):
        self.resolution = int(resolution)

    def identity(self) -> dict[str, Any]:
        return {"method": self.name, "weights_hash": hashlib.sha256(b"identity-editor-v1").hexdigest()[:16],
                "resolution": self.resolution}

    def metric_input(self, request: EditRequest) -> torch.Tensor:
        k = resolve_knobs(self.declared_knobs, request.knobs, method=self.name, item_id=request.item_id)
        return process_input(request.image, k["resize"], self.resolution)

    def run(self, requests: Sequence[EditRequest], **kwargs) -> list[torch.Tensor]:
        return [self.metric_input(r) for r in requests]


register_method("identity", lambda model=None, device=None, **options: IdentityEditor(**options),
                editor_class=IdentityEditor, default_model=None,
                description="identity: the input, unchanged (the reference every editor is compared with)")

__all__ = ["IdentityEditor"]
