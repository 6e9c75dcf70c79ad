"""The harness's view of the method registry, which lives in ``ip2p.registry`` (methods register
there without importing the harness); these names are re-exported for existing imports."""
from __future__ import annotations

from ip2p.protocol import Knob
from ip2p.registry import MethodInfo, get_method, load_plugins, register_method, registered_methods

__all__ = ["Knob", "MethodInfo", "register_method", "get_method", "registered_methods", "load_plugins"]
