"""The one protocol every editing method follows (DESIGN.md, "The one protocol").

A method declares its knobs once (``Knob``: kind, default, allowed range, one-line doc) in
``declared_knobs``; the registry (``ip2p.registry``), the harness's spec validation and the CLI read
them from there. It edits a batch of requests, says what the metrics should compare its output with
(``metric_input``: the input image as the method processed it) and who it is (``identity``, with a
required ``weights_hash``). The harness knows nothing else about a method. Requests in one batch may
carry different knob values and seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch

from ip2p.errors import Ip2pError, SpecError


class KnobError(Ip2pError, ValueError):
    """A knob value is outside what the method declares; the message names the request and the knob."""


# knob kind -> (python types accepted, description)
_KIND_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "float": ((int, float), "a number"),
    "int": ((int,), "an integer"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
    "choice": ((object,), "one of the listed values"),
}


@dataclass(frozen=True)
class Knob:
    """One knob of a method: its kind, default, allowed range or choices, and a one-line doc.

    ``nullable``: None is accepted (and means "the method's own choice"). ``validate``: an extra
    check returning None when the value is fine, else a sentence saying why not (for example a
    scheduler class name that must exist)."""

    kind: str = "float"
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""
    choices: tuple | None = None  # for kind "choice"
    nullable: bool = False
    validate: Callable[[Any], str | None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _KIND_TYPES:
            raise ValueError(f"knob kind must be one of {sorted(_KIND_TYPES)}, got {self.kind!r}")

    def check(self, value: Any) -> str | None:
        """None if ``value`` is acceptable, else a sentence saying why not."""
        if value is None and self.nullable:
            return None
        if self.kind == "choice":
            return None if value in (self.choices or ()) else f"must be one of {list(self.choices or ())}, got {value!r}"
        types, what = _KIND_TYPES[self.kind]
        if isinstance(value, bool) and self.kind != "bool":
            return f"must be {what}, got {value!r}"
        if not isinstance(value, types):
            return f"must be {what}, got {value!r} ({type(value).__name__})"
        if self.kind == "float" and not math.isfinite(float(value)):
            return f"must be a finite number, got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"must be >= {self.minimum}, got {value!r}"
        if self.maximum is not None and value > self.maximum:
            return f"must be <= {self.maximum}, got {value!r}"
        if self.validate is not None:
            return self.validate(value)
        return None

    def describe(self) -> str:
        """One line for ``--help`` and docs: kind, range, default and doc."""
        rng = ""
        if self.choices is not None:
            rng = " in " + "|".join("null" if c is None else str(c) for c in self.choices)
        elif self.minimum is not None or self.maximum is not None:
            rng = f" in [{'-inf' if self.minimum is None else self.minimum}, {'inf' if self.maximum is None else self.maximum}]"
        return f"{self.kind}{rng}, default {self.default!r}: {self.doc}"


def knob_defaults(declared: Mapping[str, Knob]) -> dict[str, Any]:
    """``{name: default}`` of declared knobs."""
    return {k: v.default for k, v in declared.items()}


@dataclass(frozen=True)
class EditRequest:
    """One edit: the input image ``[3, H, W]`` float in [0, 1] and everything a method may use.

    ``knobs`` overrides the method's defaults for this request only; ``seed`` fixes its noise.
    Captions are optional: InstructPix2Pix ignores them, SDEdit uses ``output_caption``,
    Text2Live-style methods use both. ``target``: the exact expected output when the data has one
    (a tensor like ``image``, or a callable loading it); only reference methods (the ``oracle``)
    read it, an editor never should.
    """

    image: torch.Tensor
    instruction: str
    input_caption: str = ""
    output_caption: str = ""
    knobs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    item_id: str = ""
    target: Any = field(default=None, repr=False, compare=False)


@runtime_checkable
class Editor(Protocol):
    """An editing method.

    ``declared_knobs`` maps knob names to ``Knob`` declarations; ``knobs`` maps them to defaults."""

    name: str
    declared_knobs: ClassVar[Mapping[str, Knob]]
    knobs: Mapping[str, Any]

    def identity(self) -> dict[str, Any]:
        """What the outputs depend on besides the request: method, ``weights_hash`` (required),
        settings."""
        ...

    def run(self, requests: Sequence[EditRequest]) -> list[torch.Tensor]:
        """Edit every request; one ``[3, H, W]`` float tensor in [0, 1] per request, in order,
        at the input's processed size. Output for a request never depends on its batch mates."""
        ...

    def metric_input(self, request: EditRequest) -> torch.Tensor:
        """The request's input image as the method processed it (``[3, H, W]`` in [0, 1], the
        output's size): what the metrics compare the output with."""
        ...


def who(item_id: str, index: int) -> str:
    """How errors name a request: its item id when it has one, else its position."""
    return f"item {item_id!r}" if item_id else f"request {index}"


SEED_MAX = 2**63 - 1  # seeds are 0..2**63-1: what torch.Generator().manual_seed takes as a non-negative int64


def check_request(request: Any, index: int = 0) -> None:
    """Refuse, naming the request, what no method can edit: not an ``EditRequest``, an instruction
    that is not text, a seed that is not an integer in 0..SEED_MAX (a bool is not an integer), an
    image tensor without data (``meta``)."""
    if not isinstance(request, EditRequest):
        raise KnobError(f"request {index}: expected an EditRequest, got {type(request).__name__}")
    name = who(request.item_id, index)
    if not isinstance(request.instruction, str):
        raise KnobError(f"{name}: instruction must be text, got {request.instruction!r}")
    seed = request.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise KnobError(f"{name}: seed must be an integer in 0..{SEED_MAX} (2**63-1, the seeds torch.Generator "
                        f"takes), got {seed!r}")
    x = request.image
    if isinstance(x, torch.Tensor):
        if x.is_meta:
            raise KnobError(f"{name}: the image is a meta tensor (it has a shape but no data); give real pixels")


def resolve_knobs(declared: Mapping[str, Any], given: Mapping[str, Any], *, method: str, item_id: str = "",
                  index: int = 0) -> dict[str, Any]:
    """Merge ``given`` over the defaults of ``declared`` (``Knob`` declarations, or plain defaults)
    and check every given value against its declaration. An unknown knob name is a ``SpecError``
    naming the method; a value outside its declaration a ``KnobError`` naming the request."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise SpecError(f"method {method!r} has no knob {unknown[0]!r}; its knobs are {sorted(declared)}")
    out = {k: (v.default if isinstance(v, Knob) else v) for k, v in declared.items()}
    for k, v in given.items():
        spec = declared[k]
        why = spec.check(v) if isinstance(spec, Knob) else None
        if why:
            raise KnobError(f"{who(item_id, index)}: knob {k} {why}")
        out[k] = v
    return out


def check_identity(identity: Mapping[str, Any], method: str) -> dict[str, Any]:
    """An editor's identity, refused when it lacks its ``weights_hash`` (results must name the model)."""
    ident = dict(identity)
    if not ident.get("weights_hash"):
        raise SpecError(f"method {method!r}: its identity() has no 'weights_hash'; every editor must name the "
                        f"weights its outputs depend on (ip2p.models.weights_identity), or a hash of its "
                        f"parameters for methods without weights")
    return ident


__all__ = ["Knob", "KnobError", "SEED_MAX", "check_request", "knob_defaults", "EditRequest", "Editor", "resolve_knobs", "check_identity", "who"]
