"""Datasets in the layouts torchvision's dataset classes create, read through those classes.

The catalogue entry names the class and its keyword arguments for each split (`DatasetInfo.torchvision`), and the
folder it creates under the data root. The class builds its sample list; this module wraps what it holds as an
`ImageSource` without decoding any image: file sets as a `PathSource` (its `_image_files`/`_labels`, or its
`(path, label)` samples), in-memory arrays (STL-10, MNIST, FER2013) as an `ArraySource`, PCam's HDF5 files as an
`HDF5Source`. Splits follow CLIP_benchmark's builder: EuroSAT, SUN397 and Caltech-101 have no test split and are
scored whole (split `all`), Caltech-101 with its background class, DTD on partition 1, FGVC Aircraft by variant.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..catalogue import DatasetInfo, TorchvisionSpec, get
from ..errors import ClipzsError
from .base import ArraySource, ImageSource, PathSource, UnreadableImage, one_line

NEEDS = {"PCAM": "h5py", "Flowers102": "scipy", "StanfordCars": "scipy"}  # optional modules a class imports
NO_DOWNLOAD = {"FER2013": "fer2013.csv (or icml_face_data.csv) from Kaggle's FER2013 challenge"}


def _require(module: str, info: DatasetInfo) -> None:
    try:
        import_module(module)
    except ImportError as e:
        raise ClipzsError(f"{info.title} needs {module}: pip install {module}") from e


def _stl10_class() -> type:
    """torchvision's STL10, its integrity check reduced to "the files exist": its own MD5s every file on each open
    (3.5 GB with the unlabeled images, which the test split does not need)."""
    from torchvision.datasets import STL10

    class Stl10(STL10):
        def _check_integrity(self) -> bool:
            return all(
                os.path.isfile(os.path.join(self.root, self.base_folder, f))
                for f, _ in (self.test_list if self.split == "test" else self.train_list[:2])
            )

    return Stl10


def _dataset_class(name: str) -> type:
    if name == "STL10":
        return _stl10_class()
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


def _construct(info: DatasetInfo, spec: TorchvisionSpec, root: Path, split: str, download: bool) -> Any:
    """The torchvision dataset object, downloading only when asked; every failure as one ClipzsError line."""
    folder = root / str(info.folder)
    if spec.cls in NEEDS:
        _require(NEEDS[spec.cls], info)
    kwargs = dict(spec.kwargs[split])
    if download:
        if spec.cls in NO_DOWNLOAD:
            raise ClipzsError(
                f"{info.title} not found: torchvision cannot download it; put {NO_DOWNLOAD[spec.cls]} in {folder}"
            )
        kwargs["download"] = True
    try:
        return _dataset_class(spec.cls)(str(root), **kwargs)
    except Exception as e:  # torchvision raises RuntimeError, OSError, URLError, ValueError, ... for bad or absent data
        action = f"download {info.title} into {root}" if download else f"read {info.title} ({split}) from {folder}"
        reason = re.sub(r"\s*You can use download=True to download it\.?", "", one_line(e))  # not a clipzs option
        raise ClipzsError(f"cannot {action} with torchvision's {spec.cls}: {reason}") from e


def _files(ds: Any) -> tuple[list[str], list[int]]:
    """Image paths and labels as a torchvision file dataset holds them (no image is opened)."""
    for paths, labels in (("_image_files", "_labels"), ("_images", "_labels")):
        if hasattr(ds, paths):
            return [str(p) for p in getattr(ds, paths)], [int(y) for y in getattr(ds, labels)]
    samples = ds._samples if hasattr(ds, "_samples") else ds.samples
    return [str(p) for p, _ in samples], [int(y) for _, y in samples]


def _caltech101(ds: Any) -> tuple[list[str], list[int], list[str]]:
    """Caltech-101 as CLIP_benchmark reads it: every sorted folder of 101_ObjectCategories, BACKGROUND_Google
    included (torchvision's class drops it), each folder's images sorted."""
    categories_dir = Path(ds.root) / "101_ObjectCategories"
    categories = sorted(d.name for d in categories_dir.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, category in enumerate(categories):
        files = sorted(str(p) for p in (categories_dir / category).glob("*.jpg"))
        paths += files
        labels += [label] * len(files)
    return paths, labels, categories


class HDF5Source(ImageSource):
    """Images [N, H, W, 3] uint8 in an HDF5 dataset (PCam), read one at a time; labels read up front."""

    def __init__(self, name: str, split: str, classes: Sequence[str], labels: np.ndarray, path: str, key: str):
        self.name, self.split, self.classes = name, split, tuple(classes)
        self.labels, self.path, self.key = np.asarray(labels, dtype=np.int64), path, key
        self._file: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # an open HDF5 file cannot cross a process boundary

    def fingerprint(self) -> str:
        stat = os.stat(self.path)
        digest = hashlib.sha256(f"{os.path.abspath(self.path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()

    def item_name(self, i: int) -> str:
        return f"{self.path}[{i}]"

    def load(self, i: int) -> Image.Image:
        try:
            if self._file is None:
                import h5py

                self._file = h5py.File(self.path, "r")
            return Image.fromarray(np.asarray(self._file[self.key][i], dtype=np.uint8)).convert("RGB")
        except Exception as e:  # h5py raises OSError, KeyError, ValueError for damaged files
            raise UnreadableImage(self.item_name(i), one_line(e)) from e


def _pcam(ds: Any, info: DatasetInfo, split: str) -> HDF5Source:
    import h5py

    files = {kind: str(Path(ds._base_folder) / entry[0]) for kind, entry in ds._FILES[split].items()}
    try:
        with h5py.File(files["targets"], "r") as f:
            labels = np.asarray(f["y"]).reshape(-1)
    except Exception as e:
        raise ClipzsError(f"cannot read the PCam labels {files['targets']}: {one_line(e)}") from e
    return HDF5Source(info.name, split, info.class_names("raw"), labels, files["images"], "x")


def _arrays(ds: Any, cls: str, info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N, H, W, 3] uint8 and labels [N] of an in-memory torchvision set."""
    if cls == "STL10":
        return np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1)), np.asarray(ds.labels)
    if cls == "MNIST":
        gray, labels = ds.data.numpy(), ds.targets.numpy()
    else:  # FER2013: (image [48, 48], label or None) pairs
        if any(y is None for _, y in ds._samples):
            raise ClipzsError(f"{info.title} {split} has no labels: put {NO_DOWNLOAD['FER2013']} in the folder")
        gray = np.stack([x.numpy() for x, _ in ds._samples]) if ds._samples else np.zeros((0, 48, 48), np.uint8)
        labels = np.asarray([y for _, y in ds._samples])
    return np.repeat(gray[..., None], 3, axis=3), labels


def _check(info: DatasetInfo, classes: Sequence[str], labels: np.ndarray, where: Path) -> None:
    """The source's classes agree with the catalogue (count; names where the catalogue has the raw ones)."""
    if len(classes) != len(info.classes):
        raise ClipzsError(f"{where}: {len(classes)} classes, but the catalogue's {info.name} has {len(info.classes)}")
    if info.raw_classes is not None and tuple(classes) != info.raw_classes:
        i = next(i for i, (a, b) in enumerate(zip(classes, info.raw_classes, strict=True)) if a != b)
        expected = info.raw_classes[i]
        raise ClipzsError(f"{where}: class {i} is {classes[i]!r}, the catalogue's {info.name} says {expected!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ClipzsError(f"{where}: labels outside 0..{len(classes) - 1}")


def open_torchvision(dataset: str, data_root: str | Path | None, split: str, download: bool = True) -> ImageSource:
    """The `sources` registry's entry point for catalogue entries read through a torchvision dataset class.

    The data is looked for in `<data_root>/<entry folder>` (data_root defaults to the entry's `default_root`);
    when that folder is missing, torchvision's downloader fetches it if `download` is allowed.
    """
    info = get(dataset)
    spec = info.torchvision
    if spec is None or info.folder is None:
        raise ClipzsError(f"{dataset} is not read through torchvision (its reader is {info.reader})")
    if split not in info.splits:
        raise ClipzsError(f"split {split!r} is not one of {dataset}'s: {', '.join(info.splits)}")
    root = Path(data_root or info.default_root).expanduser()
    folder = root / info.folder
    missing = not folder.exists()
    if missing and not download:
        raise ClipzsError(f"{info.title} not found: expected {folder} (torchvision's {spec.cls} layout under {root})")
    ds = _construct(info, spec, root, split, download=missing)
    fallback = info.class_names("raw")
    if spec.cls == "PCAM":
        source: ImageSource = _pcam(ds, info, split)
    elif spec.cls in ("STL10", "MNIST", "FER2013"):
        pixels, labels = _arrays(ds, spec.cls, info, split)
        source = ArraySource(dataset, split, getattr(ds, "classes", None) or fallback, labels, pixels)
    else:
        if spec.cls == "Caltech101":
            paths, labels, classes = _caltech101(ds)
        else:
            paths, labels = _files(ds)
            classes = list(getattr(ds, "classes", None) or fallback)
        if spec.cls == "SUN397":  # torchvision lists the files in directory order: sort them for a stable order
            order = sorted(range(len(paths)), key=paths.__getitem__)
            paths, labels = [paths[i] for i in order], [labels[i] for i in order]
        source = PathSource(dataset, split, classes, np.asarray(labels, dtype=np.int64), paths)
    _check(info, source.classes, source.labels, folder)
    source.note = info.note
    return source
