"""The program's entry point (the ``ip2p`` console script and ``python -m ip2p``).

Loading the commands imports torch and takes seconds; a Ctrl-C in that time must end the same way
as one while a command runs: one line on stderr and exit status 130, never a traceback or a death
by signal. So the entry point imports nothing heavy before its guard: only Python's own start-up
(tens of milliseconds, before any of this code exists) is outside it. ``python -m ip2p.cli`` has
the same guard at the top of ``ip2p/cli.py``."""
from __future__ import annotations

from ip2p.errors import exit_interrupted


def run() -> None:
    """Load the CLI and run it; Ctrl-C at any point is one line and exit status 130."""
    try:
        from ip2p.cli import main

        main()
    except KeyboardInterrupt:
        exit_interrupted()
