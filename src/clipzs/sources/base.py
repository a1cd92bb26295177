"""Image sources: the labelled images of one dataset split, read in order, with a stable fingerprint.

A source knows nothing about models or prompts. It holds the labels [N] and the raw class names up front and
yields decoded RGB images on demand, so the images themselves are never all in memory (unless the dataset
already is an array, as CIFAR's is). An image that cannot be decoded is yielded as an `UnreadableImage`, not
raised, so the caller decides whether to skip it or stop.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ClipzsError

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class UnreadableImage(ClipzsError):
    """An image that could not be decoded: which one (`name`) and why (`reason`, one line)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot read image {name}: {reason}")
        self.name, self.reason = name, reason


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grayscale, palette and RGBA converted, 16-bit scaled (Pillow would clip)."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def decode(data: bytes | str | os.PathLike, name: str) -> Image.Image:
    """An encoded image (a path, or the file's bytes) as 8-bit RGB; `UnreadableImage` naming `name` if it fails."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():  # a huge image is read as the user asked; its bomb warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                img.load()
                return to_rgb(img)
    except Exception as e:  # Pillow's decoders raise many types for damaged files (OSError, SyntaxError, ...)
        raise UnreadableImage(name, re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", one_line(e))) from e


def load_rgb(path: str | Path) -> Image.Image:
    """Open any PIL-readable image file as 8-bit RGB (see `to_rgb`); `UnreadableImage` if it cannot be decoded,
    or is not a regular file (a folder, or a named pipe, which would be waited on for ever)."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as e:
        raise UnreadableImage(str(path), e.strerror or one_line(e)) from e
    if not regular:
        raise UnreadableImage(str(path), "not a regular file")
    return decode(path, str(path))


class ImageSource:
    """Labelled images of one split: raw class names, labels [N] int64, and the images, read on demand.

    Subclasses set the attributes and implement `fingerprint` and either `load` (random access) or `read`
    (a stream: `random_access = False`).
    """

    name: str  # the dataset's name: a catalogue name, or the reader's (`folder`, `wds`, `csv`, ...)
    split: str
    classes: tuple[str, ...]  # raw class names, index = label
    labels: np.ndarray  # [N] int64
    random_access: bool = True  # whether `load(i)` is cheap for any i
    pixels: np.ndarray | None = None  # [N, H, W, 3] uint8 when the whole set is an array in memory
    note: str | None = None  # something the results should say about how the set is scored
    templates: tuple[str, ...] | None = None  # the dataset's own zero-shot templates (`{}` for the class), if any

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """SHA256 (hex) of what determines the images, for the feature cache's key."""
        raise NotImplementedError

    def item_name(self, i: int) -> str:
        """How to name image `i` to a person: its path, its shard and key, or its index."""
        return f"{self.name}/{self.split} image {i}"

    def load(self, i: int) -> Image.Image:
        """Image `i` as 8-bit RGB; `UnreadableImage` if it cannot be decoded."""
        raise NotImplementedError(f"{type(self).__name__} is read as a stream")

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image | UnreadableImage]]:
        """Each of `indices` (increasing for a stream) with its image, or the `UnreadableImage` it raised."""
        for i in indices:
            try:
                yield int(i), self.load(int(i))
            except UnreadableImage as e:
                yield int(i), e

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """The images at `indices` (increasing), in that order."""
        return Subset(self, np.asarray(indices, dtype=np.int64))


def sha256_text(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


class ArraySource(ImageSource):
    """Images held as one uint8 array [N, H, W, 3] (CIFAR, MNIST-like sets)."""

    def __init__(self, name: str, split: str, classes: Sequence[str], labels: np.ndarray, pixels: np.ndarray):
        if not (pixels.ndim == 4 and pixels.shape[3] == 3 and pixels.dtype == np.uint8):
            raise ClipzsError(
                f"{name} {split}: images of shape {pixels.shape} ({pixels.dtype}), not [N, H, W, 3] uint8"
            )
        if len(pixels) != len(labels):
            raise ClipzsError(f"{name} {split}: {len(pixels)} images but {len(labels)} labels; the files are damaged")
        self.name, self.split, self.classes = name, split, tuple(classes)
        self.labels, self.pixels = np.asarray(labels, dtype=np.int64), np.ascontiguousarray(pixels)

    def fingerprint(self) -> str:
        return sha256_text(repr(self.pixels.shape), self.pixels.data.cast("B"), self.labels.tobytes())

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.pixels[i])

    def subset(self, indices: Sequence[int]) -> ImageSource:
        indices = np.asarray(indices, dtype=np.int64)
        return ArraySource(self.name, self.split, self.classes, self.labels[indices], self.pixels[indices])


class PathSource(ImageSource):
    """Images as files, decoded when read; fingerprinted by each file's path, size and mtime."""

    def __init__(self, name: str, split: str, classes: Sequence[str], labels: np.ndarray, paths: Sequence[str]):
        assert len(paths) == len(labels), (len(paths), len(labels))
        self.name, self.split, self.classes = name, split, tuple(classes)
        self.labels, self.paths = np.asarray(labels, dtype=np.int64), tuple(str(p) for p in paths)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            try:
                info = os.stat(path)
                size, mtime = info.st_size, info.st_mtime_ns
            except OSError:  # unreadable now: it will be reported when read; the key still names it
                size = mtime = -1
            digest.update(f"{os.path.abspath(path)}\0{size}\0{mtime}\0{label}\n".encode(errors="surrogateescape"))
        return digest.hexdigest()

    def item_name(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int) -> Image.Image:
        return load_rgb(self.paths[i])

    def subset(self, indices: Sequence[int]) -> ImageSource:
        indices = np.asarray(indices, dtype=np.int64)
        return PathSource(self.name, self.split, self.classes, self.labels[indices], [self.paths[i] for i in indices])


class Subset(ImageSource):
    """Some images of another source, by increasing index; a stream is read through and filtered."""

    def __init__(self, base: ImageSource, indices: np.ndarray):
        if len(indices) > 1 and not bool((np.diff(indices) > 0).all()):
            raise ValueError("subset indices must be increasing")
        self.base, self.indices = base, indices
        self.name, self.split, self.classes = base.name, base.split, base.classes
        self.labels, self.random_access, self.note = base.labels[indices], base.random_access, base.note
        self.templates = base.templates

    def fingerprint(self) -> str:
        return sha256_text(self.base.fingerprint(), self.indices.tobytes())

    def item_name(self, i: int) -> str:
        return self.base.item_name(int(self.indices[i]))

    def load(self, i: int) -> Image.Image:
        return self.base.load(int(self.indices[i]))

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image | UnreadableImage]]:
        position = {int(self.indices[i]): int(i) for i in indices}
        for j, image in self.base.read(sorted(position)):
            yield position[j], image
