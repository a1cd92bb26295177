"""Labelled image sets: CIFAR-10/100 ("python version" layout, verified download) and image folders.

Nothing here knows about models: a set is pixels or file paths, integer labels and raw class names.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .download import fetch, file_digest
from .errors import ClipzsError

DEFAULT_ROOT = "~/.cache"
CLASSNAME_STYLES = ("raw", "clip")
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class CifarSpec:
    folder: str
    archive: str
    url: str
    md5: str
    files: dict[str, tuple[str, ...]]
    meta: str
    label_key: str
    names_key: str


CIFAR = {
    "cifar100": CifarSpec(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        files={"train": ("train",), "test": ("test",)},
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
    "cifar10": CifarSpec(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
}
DATASETS = (*CIFAR, "folder")


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images: either `pixels` [N, H, W, 3] uint8 in memory or `paths` read on demand."""

    name: str
    split: str
    classes: tuple[str, ...]  # raw class names, index = label
    labels: np.ndarray  # [N] int64
    pixels: np.ndarray | None = None
    paths: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """Image `i` as an RGB PIL image (CLIP's preprocessing starts from PIL)."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels[i])
        return load_rgb(self.paths[i])

    def fingerprint(self) -> str:
        """SHA256 of what determines the images: the pixel bytes, or each file's path, size and mtime."""
        digest = hashlib.sha256()
        if self.pixels is not None:
            digest.update(repr(self.pixels.shape).encode())
            digest.update(np.ascontiguousarray(self.pixels).data)
        else:
            for path in self.paths:
                stat = os.stat(path)
                digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def subset(self, indices: np.ndarray) -> ImageSet:
        """The images at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            name=self.name,
            split=self.split,
            classes=self.classes,
            labels=self.labels[indices],
            pixels=None if self.pixels is None else self.pixels[indices],
            paths=None if self.paths is None else tuple(self.paths[i] for i in indices),
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grayscale, palette and RGBA converted, 16-bit scaled (Pillow would clip)."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open any PIL-readable image file as 8-bit RGB (see `to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def classnames(classes: tuple[str, ...] | list[str], style: str) -> list[str]:
    """Class names as stored (`raw`, e.g. `aquarium_fish`) or as CLIP wrote them (`clip`: `aquarium fish`)."""
    if style == "raw":
        return list(classes)
    if style == "clip":
        return [c.replace("_", " ") for c in classes]
    raise ClipzsError(f"unknown class-name style {style!r}: use one of {', '.join(CLASSNAME_STYLES)}")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's dicts of lists and numpy arrays, and refuses every other global."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_batch(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ClipzsError(f"cannot read CIFAR file {path}: {e}") from e
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _ensure_cifar(spec: CifarSpec, root: Path, download: bool) -> Path:
    """The extracted CIFAR folder under `root`, extracting a verified archive or downloading one first."""
    folder = root / spec.folder
    if folder.is_dir():
        return folder
    archive = root / spec.archive
    if archive.is_file():
        if file_digest(archive, "md5") != spec.md5:
            raise ClipzsError(f"{archive} has the wrong MD5 (expected {spec.md5}): delete it to download again")
    elif download:
        fetch(spec.url, archive, "md5", spec.md5, f"CIFAR archive {spec.archive} (or the folder {folder})")
    else:
        raise ClipzsError(f"CIFAR data not found: neither {folder} nor {archive} exists")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    if not folder.is_dir():
        raise ClipzsError(f"{archive} did not contain the folder {spec.folder}")
    return folder


def load_cifar(name: str, root: str | Path = DEFAULT_ROOT, split: str = "test", download: bool = True) -> ImageSet:
    """CIFAR-10 or CIFAR-100 `split` from `root/<cifar folder>`, or its `.tar.gz`, or the official URL."""
    spec = CIFAR[name]
    if split not in spec.files:
        raise ClipzsError(f"unknown split {split!r} for {name}: use one of {', '.join(spec.files)}")
    folder = _ensure_cifar(spec, Path(root).expanduser(), download)
    batches = [_read_batch(folder / f) for f in spec.files[split]]
    meta = _read_batch(folder / spec.meta)
    try:
        pixels = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[spec.label_key], dtype=np.int64) for b in batches])
        classes = tuple(meta[spec.names_key])
    except KeyError as e:
        raise ClipzsError(f"{folder} is not in CIFAR format: no {e} in its files") from e
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(pixels) != len(labels):
        raise ClipzsError(f"{folder}: expected [N, 3072] pixels and N labels, got {pixels.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ClipzsError(f"{folder}: labels outside 0..{len(classes) - 1}")
    pixels = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ImageSet(name=name, split=split, classes=classes, labels=labels, pixels=np.ascontiguousarray(pixels))


def load_folder(root: str | Path, split: str | None = None) -> ImageSet:
    """Images under `root/<class>/` (or `root/<split>/<class>/` when that folder exists), classes sorted."""
    root = Path(root).expanduser()
    if split and (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise ClipzsError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise ClipzsError(f"no images found in {root}/<class>/ (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageSet(
        name="folder",
        split=split or "",
        classes=tuple(classes),
        labels=np.asarray(labels, dtype=np.int64),
        paths=tuple(paths),
    )


def load_dataset(name: str, root: str | Path | None = None, split: str = "test", download: bool = True) -> ImageSet:
    """Dispatch on the dataset name: `cifar100`, `cifar10` or `folder` (which needs `root`)."""
    if name in CIFAR:
        return load_cifar(name, root or DEFAULT_ROOT, split, download)
    if name == "folder":
        if root is None:
            raise ClipzsError("--dataset folder needs --data-root pointing at <root>/<class>/<image>")
        return load_folder(root, split)
    raise ClipzsError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
