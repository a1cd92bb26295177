"""ImageNet-family image folders: ImageNet (val/train), ImageNet-V2, ImageNet-Sketch, ImageNet-R and ImageNet-A.

Each is one folder per class under `<data root>/<catalogue folder>` (`.../<split>` for ImageNet's val and train,
torchvision's `ImageNet` layout), or under the data root itself when it names that folder. Class folders are named
by WordNet id (`n01440764`) or, as ImageNet-V2 ships, by class index (`0`..`999`). A wnid's label is its position
in the catalogue entry's `wnids` (sorted: 1,000 for ImageNet, the 200 of -R and -A, which are therefore scored
over those 200 classes).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ClipzsError, ClipzsWarning
from .base import PathSource
from .folder import image_files

if TYPE_CHECKING:
    from ..catalogue import DatasetInfo

WNID = re.compile(r"n\d{8}")
INDEX = re.compile(r"\d+")
SHOWN = 5  # class folders named in a message before "..."


def _names(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def class_folders(folder: Path) -> dict[str, Path]:
    """The class folders directly under `folder` by name: those named like wnids or class indices."""
    if not folder.is_dir():
        return {}
    return {d.name: d for d in folder.iterdir() if d.is_dir() and (WNID.fullmatch(d.name) or INDEX.fullmatch(d.name))}


def find_folder(root: Path, folder: str, split: str, splits: tuple[str, ...]) -> tuple[Path, Path | None]:
    """Where the split's class folders are expected, and where they were found (None: nowhere).

    With several splits they are `<root>/<folder>/<split>`; the root may also be `<folder>` itself or, when named
    after the split, the split's folder. With one split they are `<root>/<folder>`, or the root itself.
    """
    if len(splits) > 1:
        expected = root / folder / split
        candidates = [expected, root / split] + ([root] if root.name == split else [])
    else:
        expected = root / folder
        candidates = [expected, root]
    return expected, next((c for c in candidates if class_folders(c)), None)


def label_folders(folders: dict[str, Path], wnids: tuple[str, ...], title: str, where: Path) -> dict[int, Path]:
    """Each class folder's label: its wnid's position in `wnids`, or its name as a class index (ImageNet-V2)."""
    kinds = {bool(WNID.fullmatch(name)) for name in folders}
    if len(kinds) > 1:
        raise ClipzsError(f"{where} mixes wnid folders (n01440764) with class-index folders (0..{len(wnids) - 1})")
    if kinds == {True}:
        position = {wnid: i for i, wnid in enumerate(wnids)}
        unknown = sorted(set(folders) - set(position))
        if unknown:
            raise ClipzsError(f"{where} has class folders that are not {title} classes: {_names(unknown)}")
        return {position[name]: path for name, path in folders.items()}
    padded = sorted((name for name in folders if name != str(int(name))), key=int)
    if padded:
        raise ClipzsError(f"{where} has class-index folders with leading zeros (write 7, not 007): {_names(padded)}")
    outside = sorted((name for name in folders if int(name) >= len(wnids)), key=int)
    if outside:
        raise ClipzsError(f"{where} has class-index folders outside 0..{len(wnids) - 1} of {title}: {_names(outside)}")
    return {int(name): path for name, path in folders.items()}


def load_imagenet(entry: DatasetInfo, root: str | Path, split: str) -> PathSource:
    """The images of catalogue `entry` (an ImageNet-family `DatasetInfo`) for `split`, found under `root`.

    A partial copy (class folders missing or empty) is read and scored over all the entry's classes, with a
    warning and a `note` saying so, since its accuracy is then not comparable with published numbers.
    """
    if split not in entry.splits:
        raise ClipzsError(f"split {split!r} is not one of {entry.name}'s: {', '.join(entry.splits)}")
    assert entry.wnids and len(entry.wnids) == len(entry.classes) and entry.folder, entry.name
    expected, folder = find_folder(Path(root).expanduser(), entry.folder, split, entry.splits)
    if folder is None:
        raise ClipzsError(
            f"{entry.title} {split} not found: expected class folders (<wnid>/ or <index>/ holding images) in "
            f"{expected}, or --data-root pointing at that folder"
        )
    by_label = label_folders(class_folders(folder), entry.wnids, entry.title, folder)
    paths, labels = [], []
    for label in sorted(by_label):
        files = image_files(by_label[label])
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise ClipzsError(f"no images in the class folders of {folder}")
    present = set(labels)
    missing = [wnid for i, wnid in enumerate(entry.wnids) if i not in present]
    note = entry.note
    if missing:
        partial = (
            f"partial copy: {len(missing)} of {len(entry.wnids)} classes have no images in {folder} "
            f"({_names(missing)}); scored over all {len(entry.wnids)} classes on the {len(paths)} images present, "
            "so not comparable with published numbers"
        )
        warnings.warn(f"{entry.title}: {partial}", ClipzsWarning, stacklevel=2)
        note = f"{note}; {partial}" if note else partial
    source = PathSource(entry.name, split, entry.raw_classes or entry.classes, np.asarray(labels, np.int64), paths)
    source.note = note
    return source


def open_imagenet(dataset: str, data_root: str | Path | None, split: str, download: bool = True) -> PathSource:
    """The `sources` registry's entry point for the ImageNet family (never downloaded: ImageNet's licence)."""
    from .. import catalogue

    entry = catalogue.get(dataset)
    return load_imagenet(entry, data_root or entry.default_root, split)
