"""clipzs: zero-shot image classification with CLIP and prompt ensembling.

The public names are imported on first use, so `import clipzs` (and `clipzs --version`) does not import torch.
"""

from __future__ import annotations

from importlib import import_module

from ._version import __version__

_PUBLIC = {
    "ClipzsError": ".errors",
    "ZeroShotClassifier": ".classifier",
    "compare": ".pipeline",
    "encode": ".pipeline",
    "evaluate": ".pipeline",
    "load_model": ".models",
    "select": ".pipeline",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'clipzs' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name], __name__), name)
