"""`ip2p methods`: every registered editing method and its knobs, read from the one declaration
(``declared_knobs`` on the method, through ``ip2p.registry``)."""
from __future__ import annotations

import json
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("methods")(methods_command)


def methods_command(
    name: Optional[str] = typer.Argument(None, help="one method (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (name, default model, knobs) instead of text"),
    plugin: list[str] = typer.Option([], "--plugin", help="module to import first (it registers methods)"),
) -> None:
    """List editing methods, their default models and their knobs (kind, range, default, doc)."""
    from ip2p.registry import get_method, load_plugins, registered_methods

    load_plugins(plugin)
    infos = [get_method(name)] if name else sorted(registered_methods().values(), key=lambda i: i.name)
    if as_json:
        typer.echo(json.dumps([{
            "name": i.name, "default_model": i.default_model, "description": i.description,
            "knobs": {k: {"kind": v.kind, "default": v.default, "minimum": v.minimum, "maximum": v.maximum,
                          "choices": None if v.choices is None else list(v.choices), "doc": v.doc}
                      for k, v in i.knobs.items()}} for i in infos], indent=2, default=str))
        return
    for i in infos:
        typer.echo(f"{i.name}  (default model: {i.default_model}){'  ' + i.description if i.description else ''}")
        for k, v in i.knobs.items():
            typer.echo(f"    {k}: {v.describe()}")
