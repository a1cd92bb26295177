"""Encoding engines besides the local one (`encode.encode_images`); each fills the same feature-cache chunks with
the same bits.

`ray` (engines/ray.py) encodes on a Ray cluster with Ray Data. It is imported only when asked for, so clipzs never
imports Ray otherwise; `require` checks that it can be, without importing anything.
"""

from __future__ import annotations

from importlib.util import find_spec

from ..errors import ClipzsError

RAY_MISSING = "engine ray needs Ray Data, which is not installed: pip install 'clipzs[ray]'"


def require(engine: str) -> None:
    """Stop with one line, before any work, when `engine` needs a package that is not installed."""
    if engine == "ray" and find_spec("ray") is None:
        raise ClipzsError(RAY_MISSING, parameter="engine")
