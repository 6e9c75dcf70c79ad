"""Errors of ip2p-bench: each names the item, the field and, where there is one, the fix."""
from __future__ import annotations

import sys

# A Ctrl-C (SIGINT) ends every command with this one line on stderr and this exit status, the
# shell's status for a process ended by SIGINT (128 + 2).
INTERRUPT_LINE = "interrupted (SIGINT): stopped; rerun the same command to resume"
INTERRUPTED = 130


def run_guarded(load_main) -> None:
    """Run the program ``load_main()`` returns (loading it inside the guard): a Ctrl-C at any point
    ends the process with ``INTERRUPT_LINE`` and status 130.

    Two ways a Ctrl-C escapes an ordinary ``except KeyboardInterrupt`` (both seen under load, in the
    tests of ``tests/test_exit_status.py``):
    - it lands in a finaliser (a ``__del__``, a weakref callback; e.g. the ``regex`` module's while
      the tokenizer loads), where Python prints "Exception ignored" and goes on: the command would run
      on as if nothing happened. The guard's ``sys.unraisablehook`` ends the process there instead;
    - a process that printed our line and raised SystemExit(130) still ended by SIGINT (status -2)
      in about 1 run of 24 under load: something in interpreter shutdown. So an interrupted process
      ends by ``os._exit(130)`` once its output is flushed: everything a command writes is written
      atomically as it goes (the checkpoints, the sweep's records), so nothing that was done is lost."""
    sys.unraisablehook = _interrupt_in_finaliser
    try:
        load_main()()
    except KeyboardInterrupt:
        _end_interrupted()
    except SystemExit as e:
        if e.code == INTERRUPTED:  # the CLI printed the line
            end_process(INTERRUPTED)
        raise


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


def _end_interrupted() -> None:
    sys.stderr.write(INTERRUPT_LINE + "\n")
    end_process(INTERRUPTED)


def _interrupt_in_finaliser(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _end_interrupted()
    sys.__unraisablehook__(unraisable)


class Ip2pError(Exception):
    """Base class: the CLI prints these as one clear line and exits with status 2."""


class ImageReadError(Ip2pError):
    """An image file is missing or cannot be decoded."""


class ModelLoadError(Ip2pError):
    """Model weights cannot be found, or their shapes do not fit together."""


class SpecError(Ip2pError):
    """An experiment spec is malformed; the message names the field."""


class DataRowError(Ip2pError):
    """A dataset or test-set row is malformed; the message names the row and the field."""


class NonFiniteOutputError(Ip2pError):
    """A model produced NaN or Inf values."""


class GoldenMismatchError(Ip2pError):
    """A golden file was made under another measurement (metric spec, items, seeds or knob
    settings) than the run it is asked to judge; the message names the difference."""
