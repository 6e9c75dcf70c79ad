"""Errors of ip2p-bench: each names the item, the field and, where there is one, the fix."""
from __future__ import annotations

# A Ctrl-C (SIGINT) ends every command with this one line on stderr and this exit status, the
# shell's status for a process ended by SIGINT (128 + 2).
INTERRUPT_LINE = "interrupted (SIGINT): stopped; rerun the same command to resume"
INTERRUPTED = 130


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
