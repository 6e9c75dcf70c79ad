"""The program's entry point (the ``ip2p`` console script, ``python -m ip2p`` and ``python -m ip2p.cli``).

Loading the commands imports torch and takes seconds; a Ctrl-C in that time must end the same way
as one while a command runs: one line on stderr and exit status 130, never a traceback or a death
by signal. So the entry point imports nothing heavy before its guard: only Python's own start-up
(tens of milliseconds, before any of this code exists) is outside it.

Two ways a Ctrl-C escapes an ordinary ``except KeyboardInterrupt`` (both seen under load, in the
tests of ``tests/test_exit_status.py``):
- it lands in a finaliser (a ``__del__``, a weakref callback; e.g. the ``regex`` module's while
  the tokenizer loads), where Python prints "Exception ignored" and goes on: the command would run
  on as if nothing happened. The guard's ``sys.unraisablehook`` ends the process there instead;
- a process that printed our line and raised SystemExit(130) still ended by SIGINT (status -2)
  in about 1 run of 24 under load: something in interpreter shutdown. So an interrupted process
  ends by ``os._exit(130)`` once its output is flushed: everything a command writes is written
  atomically as it goes (the checkpoints, the sweep's records), so nothing that was done is lost."""
from __future__ import annotations

import sys

from ip2p.errors import INTERRUPT_LINE, INTERRUPTED


def end_process(code: int) -> None:
    """Flush what the command printed and logged, then end the process with ``code`` at once
    (no interpreter shutdown: no finaliser can swallow or turn the status into a death by signal)."""
    import logging
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not hide the status
            pass
    logging.shutdown()
    os._exit(code)


def _interrupt_in_finaliser(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.stderr.write(INTERRUPT_LINE + "\n")
        end_process(INTERRUPTED)
    sys.__unraisablehook__(unraisable)


def run() -> None:
    """Load the CLI and run it; Ctrl-C at any point is one line and exit status 130."""
    sys.unraisablehook = _interrupt_in_finaliser
    try:
        from ip2p.cli import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPT_LINE + "\n")
        end_process(INTERRUPTED)
    except SystemExit as e:
        if e.code == INTERRUPTED:  # the CLI printed the line
            end_process(INTERRUPTED)
        raise
