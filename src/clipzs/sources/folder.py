"""Image folders: `<root>/<class>/**/<image>` (or `<root>/<split>/<class>/...` when that folder exists), the layout
of torchvision's `ImageFolder`; classes are the sorted folder names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ClipzsError
from .base import IMAGE_SUFFIXES, PathSource


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_folder(root: str | Path, split: str | None = None, name: str = "folder") -> PathSource:
    """Images under `root/<class>/` (or `root/<split>/<class>/` when that folder exists), classes sorted."""
    root = Path(root).expanduser()
    if split and (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise ClipzsError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = image_files(root / cls)
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise ClipzsError(f"no images found in {root}/<class>/ (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return PathSource(name, split or "", classes, np.asarray(labels, dtype=np.int64), paths)


def open_folder(dataset: str, data_root: str | Path | None, split: str | None, download: bool = True) -> PathSource:
    """The `sources` registry's entry point for `--dataset folder`."""
    if data_root is None:
        raise ClipzsError("dataset folder needs data_root: a folder holding <class>/<image> folders", "data_root")
    return load_folder(data_root, split)
