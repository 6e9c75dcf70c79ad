"""Datasets and test sets: readers of the real formats, pair generation, the CLIP filter."""
from ip2p.data.types import EditExample

__all__ = ["EditExample"]
