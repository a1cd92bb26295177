"""Image sources by dataset name: one registry from a name (or a catalogue entry's reader) to its reader.

`open_source(dataset, data_root, split)` returns an `ImageSource`. Readers are imported only when used, so
naming a dataset costs nothing until it is read.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from .base import ArraySource, ImageSource, PathSource, Subset, UnreadableImage, decode, load_rgb, to_rgb

# reader name -> (module, function); each function is `f(dataset, data_root, split, download) -> ImageSource`
READERS: dict[str, tuple[str, str]] = {
    "cifar": ("cifar", "open_cifar"),
    "folder": ("folder", "open_folder"),
    "torchvision": ("torchvision_sets", "open_torchvision"),
    "imagenet": ("imagenet", "open_imagenet"),
    "wds": ("wds", "open_wds"),
    "csv": ("table", "open_table"),
    "parquet": ("table", "open_table"),
}
GENERIC = ("folder", "wds", "csv", "parquet")  # dataset names that are formats, not catalogue entries


def reader(name: str) -> Callable[..., ImageSource]:
    module, function = READERS[name]
    return getattr(import_module(f".{module}", __package__), function)


def open_source(
    dataset: str, data_root: str | Path | None = None, split: str | None = None, download: bool = True
) -> ImageSource:
    """The images of `split` (the dataset's default when None) of `dataset`, read from `data_root`."""
    if dataset in GENERIC:
        return reader(dataset)(dataset, data_root, split, download)
    from ..catalogue import get

    entry = get(dataset)
    return reader(entry.reader)(dataset, data_root, split or entry.default_split, download)


__all__ = [
    "ArraySource",
    "ImageSource",
    "PathSource",
    "Subset",
    "UnreadableImage",
    "decode",
    "load_rgb",
    "open_source",
    "to_rgb",
]
