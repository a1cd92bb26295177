"""Image folders: `<root>/<class>/**/<image>` (or `<root>/<split>/<class>/...` when that folder exists), the layout
of torchvision's `ImageFolder`; classes are the sorted folder names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ClipzsError
from .base import IMAGE_SUFFIXES, PathSource

SPLIT_FOLDERS = frozenset({"train", "val", "valid", "validation", "test"})  # a root holding only these holds splits


def _unlistable(e: OSError) -> None:
    raise ClipzsError(f"cannot list {e.filename}: {e.strerror or e}")


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively (symbolic links to folders are not followed), sorted; a
    ClipzsError if some folder cannot be listed, rather than its images silently missing."""
    found = []
    for parent, _, names in os.walk(folder, onerror=_unlistable):
        found += [Path(parent, n) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in found if p.is_file())


def _subfolders(root: Path) -> list[str]:
    """The names of the folders in `root`, hidden ones left out, sorted."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def load_folder(root: str | Path, split: str | None = None, name: str = "folder") -> PathSource:
    """Images under `root/<class>/` (or `root/<split>/<class>/` when that folder exists), classes sorted. A split
    that is not there is refused where the root holds only split folders (`train`, `test`, ...), not classes."""
    root = Path(root).expanduser()
    if split and (root / split).is_dir():
        root = root / split
    elif split and root.is_dir():
        folders = _subfolders(root)
        if folders and set(folders) <= SPLIT_FOLDERS:  # split folders, not classes (CIFAR-100 has a class "train")
            raise ClipzsError(
                f"split {split!r} not found: no folder {root / split} (found {', '.join(folders)})", "split"
            )
    if not root.is_dir():
        raise ClipzsError(f"image folder not found: {root}")
    classes = _subfolders(root)
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
