"""Crash injection for the resume tests: SIGKILL the process at a chosen point of its work.

A long command calls ``KillSwitch(ENV_NAME).tick(stage)`` after each unit of work. When the
environment variable holds ``"<stage>:<n>"``, the n-th tick of that stage kills the process with
SIGKILL (no cleanup, no flush of anything but stderr), as a power cut or OOM kill would. Unset or
malformed, it never fires.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter


class KillSwitch:
    def __init__(self, env_name: str):
        stage, _, n = os.environ.get(env_name, "").partition(":")
        self.stage, self.n = stage, int(n) if n.strip().isdigit() else 0
        self.counts: Counter[str] = Counter()

    def tick(self, stage: str) -> None:
        self.counts[stage] += 1
        if self.n and stage == self.stage and self.counts[stage] >= self.n:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
