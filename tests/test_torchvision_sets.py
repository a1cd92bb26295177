"""Readers for torchvision's on-disk layouts, on tiny copies of those layouts written here."""

import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from clipzs import catalogue
from clipzs.errors import ClipzsError
from clipzs.sources import ArraySource, PathSource, UnreadableImage, open_source


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_stl10(root, split: str, pixels: np.ndarray, labels: np.ndarray) -> None:
    """STL-10's binary layout: [N, 3, 96, 96] uint8 stored column-major, labels 1..10 as uint8."""
    folder = root / "stl10_binary"
    folder.mkdir(exist_ok=True)
    (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(pixels.transpose(0, 3, 2, 1)).tobytes())
    (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(catalogue.get("stl10").classes) + "\n")


def test_stl10_binary_layout(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    labels = np.array([3, 0, 9, 3, 1])
    write_stl10(tmp_path, "test", pixels, labels)
    source = open_source("stl10", tmp_path, "test", download=False)
    assert isinstance(source, ArraySource) and len(source) == 5 and source.split == "test"
    assert source.labels.tolist() == labels.tolist()
    assert source.classes == catalogue.get("stl10").classes
    for i in range(5):
        assert np.array_equal(np.asarray(source.load(i)), pixels[i])
    first = source.fingerprint()
    assert open_source("stl10", tmp_path, download=False).fingerprint() == first  # default split: test
    pixels[2, 0, 0, 0] ^= 1
    write_stl10(tmp_path, "test", pixels, labels)
    assert open_source("stl10", tmp_path, "test", download=False).fingerprint() != first
    with pytest.raises(ClipzsError, match=r"cannot read STL-10 \(train\) from .*stl10_binary") as e:
        open_source("stl10", tmp_path, "train", download=False)  # the folder exists, the train files do not
    assert "\n" not in str(e.value)


def write_food101(root, images: dict[str, list[np.ndarray]]) -> None:
    """Food-101's layout: meta/test.json maps every class to its images' `class/id`, images/<class>/<id>.jpg.

    The images are PNG data under the .jpg names torchvision expects, so pixels can be compared exactly.
    """
    base = root / "food-101"
    meta = {name: [] for name in catalogue.get("food101").raw_classes}
    for name, arrays in images.items():
        (base / "images" / name).mkdir(parents=True)
        for k, pixels in enumerate(arrays):
            (base / "images" / name / f"{k}.jpg").write_bytes(png_bytes(pixels))
            meta[name].append(f"{name}/{k}")
    (base / "meta").mkdir()
    (base / "meta" / "test.json").write_text(json.dumps(meta))


def test_food101_layout(tmp_path):
    rng = np.random.default_rng(1)
    images = {name: [rng.integers(0, 256, (8, 6, 3), dtype=np.uint8) for _ in range(2)] for name in ("tacos", "pho")}
    write_food101(tmp_path, images)
    source = open_source("food101", tmp_path, "test", download=False)
    raw = catalogue.get("food101").raw_classes
    assert isinstance(source, PathSource) and len(source) == 4
    assert source.classes == raw and source.classes[raw.index("apple_pie")] == "apple_pie"
    assert source.labels.tolist() == [raw.index("pho")] * 2 + [raw.index("tacos")] * 2  # torchvision's sorted order
    assert np.array_equal(np.asarray(source.load(0)), images["pho"][0])
    assert np.array_equal(np.asarray(source.load(3)), images["tacos"][1])
    first = source.fingerprint()
    changed = tmp_path / "food-101" / "images" / "tacos" / "1.jpg"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert source.fingerprint() != first
    changed.write_bytes(b"not an image")
    name, image = next(iter(source.read([3])))
    assert name == 3 and isinstance(image, UnreadableImage) and str(changed) in str(image)


def test_missing_data_is_one_line(tmp_path):
    with pytest.raises(ClipzsError) as e:
        open_source("food101", tmp_path, download=False)
    assert (
        str(e.value)
        == f"Food-101 not found: expected {tmp_path / 'food-101'} (torchvision's Food101 layout under {tmp_path})"
    )
    with pytest.raises(ClipzsError, match="split 'val' is not one of food101's: test, train"):
        open_source("food101", tmp_path, "val", download=False)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def offline(root, split, download=False):
        calls.append(download)
        raise OSError("<urlopen error [Errno -3]\n Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "Food101", offline)
    with pytest.raises(ClipzsError) as e:
        open_source("food101", tmp_path, download=True)
    assert calls == [True] and "\n" not in str(e.value)
    assert str(e.value).startswith(f"cannot download Food-101 into {tmp_path} with torchvision's Food101: <urlopen")


def test_an_incomplete_copy_is_one_line_without_torchvisions_download_advice(tmp_path):
    (tmp_path / "stl10_binary").mkdir()
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(b"")
    with pytest.raises(ClipzsError) as e:
        open_source("stl10", tmp_path, "test", download=False)
    assert str(e.value).endswith("with torchvision's STL10: Dataset not found or corrupted.")  # no `download=True`


def test_pcam_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "pcam").mkdir()
    monkeypatch.setitem(sys.modules, "h5py", None)  # importing it now raises ImportError
    with pytest.raises(ClipzsError, match=r"^PatchCamelyon \(PCam\) needs h5py: pip install h5py$"):
        open_source("pcam", tmp_path, download=False)


def test_eurosat_is_scored_whole_and_checks_folder_names(tmp_path):
    raw = catalogue.get("eurosat").raw_classes
    folders = tmp_path / "eurosat" / "2750"
    for label, name in enumerate(raw):
        (folders / name).mkdir(parents=True)
        (folders / name / f"{name}_1.jpg").write_bytes(png_bytes(np.full((4, 4, 3), label, np.uint8)))
    source = open_source("eurosat", tmp_path, download=False)
    assert source.split == "all" and source.labels.tolist() == list(range(10)) and source.classes == raw
    assert source.note and "27,000" in source.note
    assert np.asarray(source.load(7)).max() == 7
    os.rename(folders / "River", folders / "Rivers")
    with pytest.raises(ClipzsError, match="class 8 is 'Rivers', the catalogue's eurosat says 'River'"):
        open_source("eurosat", tmp_path, download=False)


def test_caltech101_keeps_the_background_class(tmp_path):
    raw = catalogue.get("caltech101").raw_classes
    categories = tmp_path / "caltech101" / "101_ObjectCategories"
    for name in raw:
        (categories / name).mkdir(parents=True)
    for name in ("BACKGROUND_Google", "yin_yang"):
        for k in (2, 1):
            (categories / name / f"image_{k:04d}.jpg").write_bytes(png_bytes(np.zeros((3, 3, 3), np.uint8)))
    source = open_source("caltech101", tmp_path, download=False)
    assert len(source.classes) == 102 and source.labels.tolist() == [0, 0, 101, 101]
    assert source.item_name(0).endswith("BACKGROUND_Google/image_0001.jpg")
    assert catalogue.class_names("caltech101")[0] == "background"


def test_pcam_hdf5_layout(tmp_path):
    import pickle

    h5py = pytest.importorskip("h5py")
    pixels = np.random.default_rng(2).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    (tmp_path / "pcam").mkdir()
    with h5py.File(tmp_path / "pcam" / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f["x"] = pixels
    with h5py.File(tmp_path / "pcam" / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f["y"] = np.array([1, 0, 1], dtype=np.uint8).reshape(3, 1, 1, 1)
    source = open_source("pcam", tmp_path, download=False)
    assert source.labels.tolist() == [1, 0, 1] and source.classes == catalogue.get("pcam").classes
    assert np.array_equal(np.asarray(source.load(2)), pixels[2])
    assert np.array_equal(np.asarray(pickle.loads(pickle.dumps(source)).load(0)), pixels[0])  # reopens in a worker
