"""The method registry: names an experiment spec may use -> editor factories and their knobs.

A spec says ``name: instructpix2pix`` and the registry says how to build that editor and which
knobs it has, so specs are validated before any weights load. Baselines add themselves with
``register_method(...)`` at import time; the registry imports every module of the ``baselines``
package the first time a name is looked up, so a baseline is usable as soon as its file exists.

A factory is called as ``factory(model=<source or None>, device=<torch device string>, **options)``
and returns an object following ``ip2p.protocol.Editor``.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ip2p.errors import SpecError

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
    """A knob a method declares: its kind and the smallest value it accepts (if any)."""

    kind: str = "float"
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""
    choices: tuple | None = None  # for kind "choice"

    def check(self, value: Any) -> str | None:
        """None if ``value`` is acceptable, else a sentence saying why not."""
        if self.kind == "choice":
            return None if value in (self.choices or ()) else f"must be one of {list(self.choices or ())}, got {value!r}"
        types, what = _KIND_TYPES[self.kind]
        if isinstance(value, bool) and self.kind != "bool":
            return f"must be {what}, got {value!r}"
        if not isinstance(value, types):
            return f"must be {what}, got {value!r} ({type(value).__name__})"
        if self.minimum is not None and value < self.minimum:
            return f"must be >= {self.minimum}, got {value!r}"
        if self.maximum is not None and value > self.maximum:
            return f"must be <= {self.maximum}, got {value!r}"
        return None


@dataclass(frozen=True)
class MethodInfo:
    """One registered method.

    ``knobs``: every knob the editor accepts (validated in specs before loading).
    ``default_model``: the model source used when the spec gives none.
    ``demo_grid`` / ``demo_knobs``: a small grid the demo uses for this method on the small world.
    ``curve_knob``: the knob that varies along one curve of the paper's figure (others split curves).
    """

    name: str
    factory: Callable[..., Any]
    knobs: Mapping[str, Knob]
    default_model: str | None = None
    description: str = ""
    demo_model: str | None = None
    demo_grid: Mapping[str, list] = field(default_factory=dict)
    demo_knobs: Mapping[str, Any] = field(default_factory=dict)
    curve_knob: str | None = None


_REGISTRY: dict[str, MethodInfo] = {}
_PLUGIN_PACKAGES = ("baselines",)
_plugin_errors: dict[str, str] = {}
_plugins_loaded = False


def register_method(
    name: str,
    factory: Callable[..., Any],
    knobs: Mapping[str, Knob | str],
    *,
    default_model: str | None = None,
    description: str = "",
    demo_model: str | None = None,
    demo_grid: Mapping[str, list] | None = None,
    demo_knobs: Mapping[str, Any] | None = None,
    curve_knob: str | None = None,
    replace: bool = False,
) -> MethodInfo:
    """Make ``name`` usable in specs. ``knobs`` maps knob names to a Knob or a kind string."""
    if name in _REGISTRY and not replace and _REGISTRY[name].factory is not factory:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to override it")
    info = MethodInfo(
        name=name,
        factory=factory,
        knobs={k: (v if isinstance(v, Knob) else Knob(kind=v)) for k, v in knobs.items()},
        default_model=default_model,
        description=description,
        demo_model=demo_model,
        demo_grid=dict(demo_grid or {}),
        demo_knobs=dict(demo_knobs or {}),
        curve_knob=curve_knob,
    )
    _REGISTRY[name] = info
    return info


def _load_plugins() -> None:
    """Import every module of the plugin packages once; they register their methods."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for pkg_name in _PLUGIN_PACKAGES:
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError as e:  # pragma: no cover - the package ships with the project
            _plugin_errors[pkg_name] = str(e)
            continue
        for mod in pkgutil.iter_modules(getattr(pkg, "__path__", []), prefix=pkg_name + "."):
            try:
                importlib.import_module(mod.name)
            except Exception as e:  # a half-written baseline must not break every sweep
                _plugin_errors[mod.name] = f"{type(e).__name__}: {e}"
                warnings.warn(f"could not import {mod.name} (its methods are unavailable): {e}")


def get_method(name: str) -> MethodInfo:
    """The registered method ``name``; SpecError listing the known names otherwise."""
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        msg = f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY)) or '(none)'}"
        if _plugin_errors:
            msg += "; modules that failed to import: " + "; ".join(f"{k} ({v})" for k, v in _plugin_errors.items())
        raise SpecError(msg)
    return _REGISTRY[name]


def registered_methods() -> dict[str, MethodInfo]:
    """All registered methods (after importing the plugin packages)."""
    _load_plugins()
    return dict(_REGISTRY)


# ---- built-in: InstructPix2Pix --------------------------------------------------------------

def _load_instructpix2pix(model: str | None = None, device: str | None = None, **options: Any):
    from ip2p import load_editor

    return load_editor(model or "world:ip2p", device=device, **options)


register_method(
    "instructpix2pix",
    _load_instructpix2pix,
    {
        "image_guidance_scale": Knob("float", doc="sI: image guidance scale"),
        "guidance_scale": Knob("float", doc="sT: text guidance scale"),
        "num_inference_steps": Knob("int", minimum=1, doc="sampler steps"),
        "resize": Knob("choice", choices=("paper", "diffusers", None),
                       doc="input resizing: paper (to ~resolution, multiple of 64), diffusers (multiple of 8), null (as is)"),
    },
    default_model="timbrooks/instructpix2pix",
    description="InstructPix2Pix with dual classifier-free guidance (Brooks et al.)",
    demo_model="world:ip2p",
    demo_grid={"guidance_scale": [3.0, 7.5], "image_guidance_scale": [1.0, 1.4, 1.8, 2.2]},
    demo_knobs={"num_inference_steps": 20},
    curve_knob="image_guidance_scale",
)
