"""CIFAR-10 and CIFAR-100 in the "python version" layout: a folder of pickled batches, its `.tar.gz`, or the
official URL, verified by MD5. The pickles are read by an unpickler that accepts only arrays and lists, which is
why clipzs reads them itself instead of through torchvision's `CIFAR10` (which unpickles anything)."""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..download import fetch, file_digest
from ..errors import ClipzsError
from .base import ArraySource, one_line

DEFAULT_ROOT = "~/.cache"


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
    if not isinstance(batch, dict):
        raise ClipzsError(f"{path} is not in CIFAR format: it holds a {type(batch).__name__}, not a dict")
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


def _names(values: object, folder: Path) -> tuple[str, ...]:
    """Class names as str, whether the pickle holds str or bytes (Python 3 writers may store either)."""
    if not isinstance(values, list | tuple) or not all(isinstance(v, str | bytes) for v in values):
        raise ClipzsError(f"{folder}: the class names are not a list of strings")
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values)


def load_cifar(name: str, root: str | Path = DEFAULT_ROOT, split: str = "test", download: bool = True) -> ArraySource:
    """CIFAR-10 or CIFAR-100 `split` from `root/<cifar folder>`, or its `.tar.gz`, or the official URL."""
    spec = CIFAR[name]
    if split not in spec.files:
        raise ClipzsError(f"split {split!r} is not one of {name}'s: {', '.join(spec.files)}")
    folder = _ensure_cifar(spec, Path(root).expanduser(), download)
    batches = [_read_batch(folder / f) for f in spec.files[split]]
    meta = _read_batch(folder / spec.meta)
    try:
        pixels = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[spec.label_key], dtype=np.int64) for b in batches])
        classes = _names(meta[spec.names_key], folder)
    except KeyError as e:
        raise ClipzsError(f"{folder} is not in CIFAR format: no {e} in its files") from e
    except (TypeError, ValueError) as e:  # numpy's words for ragged, None or non-numeric contents
        raise ClipzsError(f"{folder} is not in CIFAR format: {one_line(e)}") from e
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(pixels) != len(labels):
        raise ClipzsError(f"{folder}: expected [N, 3072] pixels and N labels, got {pixels.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ClipzsError(f"{folder}: labels outside 0..{len(classes) - 1}")
    import torch  # its copy of the channels-last transpose takes a quarter of numpy's here (0.03 s for 10,000)

    pixels = torch.from_numpy(pixels).view(-1, 3, 32, 32).permute(0, 2, 3, 1).contiguous().numpy()
    return ArraySource(name, split, classes, labels, pixels)


def open_cifar(dataset: str, data_root: str | Path | None, split: str, download: bool = True) -> ArraySource:
    """The `sources` registry's entry point for `cifar10` and `cifar100`."""
    return load_cifar(dataset, data_root or DEFAULT_ROOT, split, download)
