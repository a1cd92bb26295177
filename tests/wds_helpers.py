"""Writers of tiny datasets in the layouts `clipzs.sources` reads (class folders, CLIP_benchmark webdataset shards),
and ImageNet-family catalogue entries over a few classes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from clipzs.catalogue import DatasetInfo

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")
NAMES = ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark")


def imagenet_entry(name: str, wnids: tuple[str, ...], classes: tuple[str, ...], **fields) -> DatasetInfo:
    """A catalogue entry for the ImageNet reader over the given classes (fields override the defaults)."""
    defaults = dict(
        title=name,
        source="test",
        raw_classes=None,
        templates=("a photo of a {}.",),
        splits=("test",),
        default_split="test",
        reader="imagenet",
        folder=name,
        default_root="~/nonexistent-clipzs-data",
    )
    return DatasetInfo(name=name, classes=classes, wnids=wnids, **{**defaults, **fields})


def pixels(seed: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    """A small random RGB image [H, W, 3] uint8."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_class_folders(root: Path, per_class: dict[str, int], suffix: str = ".JPEG", seed: int = 0) -> Path:
    """`root/<class>/<k><suffix>`: `per_class[class]` tiny images per class."""
    for n, (cls, count) in enumerate(per_class.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            Image.fromarray(pixels(seed + 100 * n + k)).save(root / cls / f"{k}{suffix}")
    return root


def write_wds(
    root: Path,
    samples: list[tuple[str, str, bytes | None, int | None]],
    shard_sizes: list[int],
    classnames: list[str],
    templates: list[str] | None = None,
    split: str = "test",
) -> Path:
    """CLIP_benchmark's layout under `root`: `<split>/{0..}.tar` (samples `(key, image ext, image, label)` split
    into shards of `shard_sizes`; a None image or label leaves that member out), `<split>/nshards.txt`,
    `classnames.txt` and, when given, `zeroshot_classification_templates.txt`."""
    assert sum(shard_sizes) == len(samples)
    (root / split).mkdir(parents=True, exist_ok=True)
    start = 0
    for n, size in enumerate(shard_sizes):
        with wds.TarWriter(str(root / split / f"{n}.tar")) as sink:
            for key, ext, image, label in samples[start : start + size]:
                sample = {"__key__": key}
                if image is not None:
                    sample[ext] = image
                if label is not None:
                    sample["cls"] = label
                sink.write(sample)
        start += size
    (root / split / "nshards.txt").write_text(f"{len(shard_sizes)}\n")
    (root / "classnames.txt").write_text("".join(f"{name}\n" for name in classnames))
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    return root
