"""The metric-group registry: the names a spec's ``metrics.compute`` may list -> their columns.

A metric group is a registered record: its name, its columns (each with the direction that is
better and the change that counts, declared beside the function that computes it) and, for a
group a user adds, how to build its scorer. The built-in groups (clip, lpips, pixel, target, masked,
success in ``ip2p.metrics.suite``; pie, dino, structure in ``ip2p.metrics.benchmark_metrics``) are
computed by the harness's own scorer (``bench.scoring.Scorer``), which shares one CLIP and one
LPIPS among them, so they register without ``build``.

A plugin group (a module a spec lists under ``plugins:``, an ``IP2P_PLUGINS`` module or an
``ip2p.methods`` entry point, as for methods) registers with a ``build``::

    register_metric_group("sharpness", build=lambda metrics, device: Sharpness(),
                          columns=[MetricColumn("sharpness_gain", "higher", 0.01, "ratio")])

``build(metrics_spec, device)`` returns a callable ``(inputs, outputs, text_0, text_1, targets=,
masks=) -> {column: float tensor [N]}`` (images ``[N, 3, H, W]`` in [0, 1]; targets/masks None
when the items have none); an optional ``spec()`` method records what it computes with.

``COLUMNS`` maps every registered column to its ``MetricColumn``; the regression gate and the
spec's ``gate`` section read directions and tolerances from there.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

from ip2p.errors import SpecError


@dataclass(frozen=True)
class MetricColumn:
    """What a metric column means for a comparison of two models.

    ``better``: ``"higher"``, ``"lower"`` or None (the value does not depend on the edit, so no
    model can do better or worse on it). ``tolerance``: the default change a regression gate
    treats as negligible, in the column's units (a project may override it per suite).
    """

    name: str
    better: Literal["higher", "lower"] | None
    tolerance: float
    unit: str


@dataclass(frozen=True)
class MetricGroup:
    """One registered group: ``columns`` in the order it returns them; ``build`` None for a group
    the harness's own scorer computes (the built-in groups)."""

    name: str
    columns: Mapping[str, MetricColumn]
    build: Callable[[Any, str], Callable[..., Mapping[str, Any]]] | None = None
    description: str = ""


_GROUPS: dict[str, MetricGroup] = {}
COLUMNS: dict[str, MetricColumn] = {}  # every registered column -> its direction and tolerance
_BUILTIN_MODULES = ("ip2p.metrics.suite",)  # registers the built-in groups (and imports benchmark_metrics)


def _as_column(c: MetricColumn | tuple) -> MetricColumn:
    if isinstance(c, MetricColumn):
        return c
    return MetricColumn(*c)


def register_metric_group(name: str, build: Callable[..., Any] | None = None, *,
                          columns: Iterable[MetricColumn | tuple], description: str = "",
                          replace: bool = False) -> MetricGroup:
    """Make ``name`` usable in a spec's ``metrics.compute``; ``columns``: ``MetricColumn``s (or
    ``(name, better, tolerance, unit)`` tuples). A column belongs to one group."""
    if not name or not isinstance(name, str):
        raise ValueError(f"metric group names must be non-empty strings, got {name!r}")
    if name in _GROUPS and not replace:
        raise ValueError(f"metric group {name!r} is already registered; pass replace=True to override it")
    cols = {c.name: c for c in map(_as_column, columns)}
    for c in cols.values():
        if c.better not in ("higher", "lower", None):
            raise ValueError(f"metric group {name!r}, column {c.name!r}: better must be 'higher', 'lower' or None, "
                             f"got {c.better!r}")
        if not c.tolerance >= 0:
            raise ValueError(f"metric group {name!r}, column {c.name!r}: tolerance must be >= 0, got {c.tolerance!r}")
        owner = next((g.name for g in _GROUPS.values() if c.name in g.columns and g.name != name), None)
        if owner is not None:
            raise ValueError(f"metric group {name!r}: column {c.name!r} already belongs to group {owner!r}")
    if name in _GROUPS:
        for old in _GROUPS[name].columns:
            COLUMNS.pop(old, None)
    group = MetricGroup(name, cols, build, description)
    _GROUPS[name] = group
    COLUMNS.update(cols)
    return group


def _load_builtin() -> None:
    for m in _BUILTIN_MODULES:
        importlib.import_module(m)


def metric_groups() -> dict[str, MetricGroup]:
    """Every registered group (the built-in ones, and those of plugins imported so far)."""
    _load_builtin()
    return dict(_GROUPS)


def get_metric_group(name: str) -> MetricGroup:
    """The group ``name``; SpecError listing the known groups otherwise."""
    groups = metric_groups()
    if name not in groups:
        raise SpecError(f"unknown metric group {name!r}; known: {', '.join(sorted(groups))}")
    return groups[name]


def columns_of(groups: Iterable[str]) -> list[str]:
    """The declared columns of these groups, in registration order."""
    return [c for g in groups for c in get_metric_group(g).columns]
