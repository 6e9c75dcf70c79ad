"""The program's entry point (the ``ip2p`` console script, ``python -m ip2p`` and ``python -m ip2p.cli``).

Loading the commands imports torch and takes seconds; a Ctrl-C in that time must end the same way
as one while a command runs: one line on stderr and exit status 130, never a traceback or a death
by signal. So the entry point imports nothing heavy before its guard (``ip2p.errors.run_guarded``):
only Python's own start-up (tens of milliseconds, before any of this code exists) is outside it."""
from __future__ import annotations

from ip2p.errors import run_guarded


def _load_main():
    from ip2p.cli import main

    return main


def run() -> None:
    """Load the CLI and run it; Ctrl-C at any point is one line and exit status 130."""
    run_guarded(_load_main)
