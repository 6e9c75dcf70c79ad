"""The method registry: names an experiment spec may use -> editor factories and their declared knobs.

A spec says ``name: instructpix2pix`` and the registry says how to build that editor and which
knobs it has (read from the editor class's ``declared_knobs``: declared once), so specs are
validated before any weights load. Methods register with ``register_method(...)`` at import time,
without importing the harness. Where the registry looks for them, the first time a name is missing:

- the ``baselines`` package shipped with ip2p-bench (every module in it);
- installed packages' entry points in the group ``ip2p.methods`` (``name = "pkg.module"`` or
  ``"pkg.module:function"``, the function called with no arguments);
- modules named in ``IP2P_PLUGINS`` (comma-separated), or passed to ``load_plugins`` (a spec's
  ``plugins:`` list does this).

A factory is called as ``factory(model=<source or None>, device=<torch device string>, **options)``
and returns an object following ``ip2p.protocol.Editor``.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ip2p.errors import SpecError
from ip2p.protocol import Knob

ENTRY_POINT_GROUP = "ip2p.methods"
PLUGINS_ENV = "IP2P_PLUGINS"


@dataclass(frozen=True)
class MethodInfo:
    """One registered method.

    ``knobs``: every knob the editor accepts (validated in specs before loading).
    ``default_model``: the model source used when the spec gives none.
    ``demo_grid`` / ``demo_knobs`` / ``demo_limit``: a small grid the demo uses for this method on the
    small world (on its first ``demo_limit`` items, when the method is expensive).
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
    editor_class: type | None = None
    demo_limit: int | None = None


_REGISTRY: dict[str, MethodInfo] = {}
_PLUGIN_PACKAGES = ("baselines",)
_plugin_errors: dict[str, str] = {}
_plugins_loaded = False


def register_method(
    name: str,
    factory: Callable[..., Any],
    knobs: Mapping[str, Knob | str] | None = None,
    *,
    editor_class: type | None = None,
    default_model: str | None = None,
    description: str = "",
    demo_model: str | None = None,
    demo_grid: Mapping[str, list] | None = None,
    demo_knobs: Mapping[str, Any] | None = None,
    curve_knob: str | None = None,
    demo_limit: int | None = None,
    replace: bool = False,
) -> MethodInfo:
    """Make ``name`` usable in specs. Knobs come from ``editor_class.declared_knobs`` (the one
    declaration), or from ``knobs`` (name -> Knob or kind string) for factories without a class."""
    if name in _REGISTRY and not replace and _REGISTRY[name].factory is not factory:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to override it")
    if knobs is None:
        if editor_class is None or not getattr(editor_class, "declared_knobs", None):
            raise ValueError(f"method {name!r}: give editor_class (with declared_knobs) or knobs")
        knobs = editor_class.declared_knobs
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
        editor_class=editor_class,
        demo_limit=demo_limit,
    )
    _REGISTRY[name] = info
    return info


def _import_plugin(target: str) -> None:
    mod_name, _, func = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
        if func:
            getattr(mod, func)()
    except Exception as e:  # a half-written plugin must not break every sweep
        _plugin_errors[target] = f"{type(e).__name__}: {e}"
        warnings.warn(f"could not import {target} (its methods are unavailable): {e}")


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import the built-in plugin packages and entry points (once), and ``modules`` (each call);
    they register their methods."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for pkg_name in _PLUGIN_PACKAGES:
            try:
                pkg = importlib.import_module(pkg_name)
            except ImportError as e:  # pragma: no cover - the package ships with the project
                _plugin_errors[pkg_name] = str(e)
                continue
            for mod in pkgutil.iter_modules(getattr(pkg, "__path__", []), prefix=pkg_name + "."):
                _import_plugin(mod.name)
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _import_plugin(ep.value)
        for name in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
            _import_plugin(name)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise SpecError(f"plugins: cannot import {name!r} ({type(e).__name__}: {e}); it must be importable "
                            f"(on PYTHONPATH, or an installed package)") from e


def get_method(name: str) -> MethodInfo:
    """The registered method ``name``; SpecError listing the known names otherwise."""
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        msg = f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY)) or '(none)'}"
        if _plugin_errors:
            msg += "; modules that failed to import: " + "; ".join(f"{k} ({v})" for k, v in _plugin_errors.items())
        raise SpecError(msg)
    return _REGISTRY[name]


def registered_methods() -> dict[str, MethodInfo]:
    """All registered methods (after importing the plugins)."""
    load_plugins()
    return dict(_REGISTRY)


# ---- built-in: InstructPix2Pix --------------------------------------------------------------

def _load_instructpix2pix(model: str | None = None, device: str | None = None, **options: Any):
    from ip2p.editor import load_editor

    return load_editor(model or "world:ip2p", device=device, **options)


def _register_builtin() -> None:
    from ip2p.editor import InstructPix2PixEditor

    register_method(
        "instructpix2pix",
        _load_instructpix2pix,
        editor_class=InstructPix2PixEditor,
        default_model="timbrooks/instructpix2pix",
        description="InstructPix2Pix with dual classifier-free guidance (Brooks et al.)",
        demo_model="world:ip2p",
        demo_grid={"guidance_scale": [3.0, 7.5], "image_guidance_scale": [1.0, 1.4, 1.8, 2.2]},
        demo_knobs={"num_inference_steps": 20},
        curve_knob="image_guidance_scale",
    )


_register_builtin()

__all__ = ["MethodInfo", "Knob", "register_method", "get_method", "registered_methods", "load_plugins",
           "ENTRY_POINT_GROUP", "PLUGINS_ENV"]
