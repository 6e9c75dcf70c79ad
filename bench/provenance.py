"""Provenance of a run (versions, git state, hardware, time); lives in ``ip2p.util.provenance`` so the
core package can record it without importing the harness. Re-exported here for the harness."""
from __future__ import annotations

from ip2p.util.provenance import *  # noqa: F401,F403
from ip2p.util.provenance import __all__  # noqa: F401
