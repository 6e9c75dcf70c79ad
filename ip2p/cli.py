"""The `ip2p` command line. Sub-packages add their commands through `register(app)` hooks,
so each area (editing, training, the world, the harness) owns its own commands."""
from __future__ import annotations

import importlib
import sys

import typer

from ip2p.errors import Ip2pError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ip2p-bench: InstructPix2Pix editing, training, sweeps, metrics and reports.",
)

@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """ip2p-bench: InstructPix2Pix editing, training, sweeps, metrics and reports."""
    if version:
        from ip2p import __version__

        typer.echo(__version__)
        raise typer.Exit()


# Modules that contribute commands; each defines `register(app: typer.Typer) -> None`.
_COMMAND_MODULES = (
    "ip2p.editor_cli",
    "ip2p.methods_cli",
    "ip2p.export_cli",
    "ip2p.train.cli",
    "ip2p.world.cli",
    "ip2p.data.cli",
    "bench.ablate",
    "bench.cli",
    "bench.profile_cli",
    "bench.regress_cli",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that area is not built yet
                continue
            raise
        mod.register(app)


_register_all()


def main() -> None:
    try:
        app(standalone_mode=False)
    except Ip2pError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:  # pragma: no cover - passthrough
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
