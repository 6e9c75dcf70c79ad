"""The `ip2p` command line. Sub-packages add their commands through `register(app)` hooks,
so each area (editing, training, the world, the harness) owns its own commands.
The program starts in `ip2p.launch.run` (also under `python -m ip2p.cli`, below)."""
from __future__ import annotations

if __name__ == "__main__":  # `python -m ip2p.cli`: the same guard as the `ip2p` command (ip2p.launch)
    from ip2p.errors import run_guarded as _run_guarded

    def _load_main():
        from ip2p.cli import main

        return main

    _run_guarded(_load_main)
    raise SystemExit(0)

import errno
import importlib
import sys

import typer

from ip2p.errors import INTERRUPT_LINE, INTERRUPTED, Ip2pError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ip2p-bench: InstructPix2Pix editing, training, sweeps, metrics and reports.",
)

def _print_version(value: bool) -> None:
    if value:
        from ip2p import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """ip2p-bench: InstructPix2Pix editing, training, sweeps, metrics and reports."""


# Modules that contribute commands; each defines `register(app: typer.Typer) -> None`. One convention:
# a command module is `<area>_cli.py` (or `cli.py` inside a package); its `register` only adds its
# module-level `<name>_command` functions (`app.command("name")(name_command)`) or its sub-app
# (`app.add_typer`); bad input raises an `Ip2pError`, which `main` prints as one line, exit status 2.
_COMMAND_MODULES = (
    "ip2p.editor_cli",
    "ip2p.methods_cli",
    "ip2p.export_cli",
    "ip2p.train.cli",
    "ip2p.world.cli",
    "ip2p.data.cli",
    "bench.ablate.cli",
    "bench.sweep_cli",
    "bench.results_cli",
    "bench.demo_cli",
    "bench.profile_cli",
    "bench.regress.cli",
    "bench.validity_cli",
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


_register_all()  # a Ctrl-C in here is caught by ip2p.launch.run: one line, status 130


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, UsageError, Abort) classes of click and of the copy typer carries."""
    import click

    exc, usage, abort = [click.ClickException], [click.UsageError], [click.exceptions.Abort]
    try:
        from typer._click import exceptions as tex  # typer >= 0.20 ships its own click

        exc.append(tex.ClickException)
        usage.append(tex.UsageError)
        abort.append(getattr(typer, "Abort", click.exceptions.Abort))
    except ImportError:  # pragma: no cover - older typer uses click itself
        pass
    return tuple(exc), tuple(usage), tuple(abort)


def one_line(message: str) -> str:
    """An error message on one line (newlines of nested messages joined with '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _usage_line(e) -> str:
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "ip2p"
    return f"error: {command}: {one_line(e.format_message())} (see `{command} --help`)"



# Errors of the environment, not of the code: a full disk, a read-only or forbidden place.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _interrupted() -> None:
    typer.secho(INTERRUPT_LINE, fg=typer.colors.RED, err=True)
    sys.exit(INTERRUPTED)


def main() -> None:
    """Run the CLI. A user-input error (``Ip2pError``, a bad option) or an environment error (disk
    full, read-only place) is one line on stderr and exit status 2; an interrupt (Ctrl-C) is one
    line and exit status 130; anything else is a bug and keeps its traceback (exit status 1).

    Under ``standalone_mode=False`` typer turns Ctrl-C (and ``typer.Exit(code)``) into the return
    value of ``app()``: that value is the exit status, never dropped."""
    click_exc, usage_exc, abort_exc = _click_exception_types()
    try:
        rv = app(standalone_mode=False, prog_name="ip2p")
    except KeyboardInterrupt:
        _interrupted()
    except Ip2pError as e:
        typer.secho(f"error: {one_line(e)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:  # pragma: no cover - passthrough
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        if code == INTERRUPTED:
            _interrupted()
        sys.exit(code or 0)
    except usage_exc as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `ip2p train` alone: the help was shown
            sys.exit(0)
        typer.secho(_usage_line(e), fg=typer.colors.RED, err=True)
        sys.exit(2)
    except click_exc as e:
        typer.secho(f"error: {one_line(e.format_message())}", fg=typer.colors.RED, err=True)
        sys.exit(getattr(e, "exit_code", 1) or 1)
    except abort_exc:
        _interrupted()
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        typer.secho(f"error: {where}{e.strerror or e} (a full disk, or a place this user cannot write; free "
                    "space or choose another place: nothing already stored is lost)", fg=typer.colors.RED, err=True)
        sys.exit(2)
    _exit_with(rv)


def _exit_with(rv) -> None:
    """Exit with the status ``app()`` returned (an int: typer's ``Exit(code)``, 130 for Ctrl-C)."""
    if isinstance(rv, bool) or not isinstance(rv, int) or rv == 0:
        sys.exit(0)
    if rv == INTERRUPTED:
        _interrupted()
    sys.exit(rv)

