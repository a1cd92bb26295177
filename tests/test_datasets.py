"""CIFAR and image-folder sources (`clipzs.sources`) and class names by style (`prompts.class_names`)."""

import dataclasses
import pickle

import helpers
import numpy as np
import pytest
from PIL import Image

from clipzs.download import file_digest
from clipzs.errors import ClipzsError
from clipzs.prompts import class_names
from clipzs.sources import load_rgb, open_source
from clipzs.sources.cifar import CIFAR, load_cifar
from clipzs.sources.folder import load_folder


def test_cifar100_split_is_read_with_pixels_labels_and_raw_names(cifar_root):
    images = load_cifar("cifar100", cifar_root, "test")
    assert len(images) == 40 and images.pixels.shape == (40, 32, 32, 3) and images.pixels.dtype == np.uint8
    assert images.classes == tuple(helpers.CIFAR100_CLASSES)
    with open(cifar_root / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f)
    assert images.labels.tolist() == raw["fine_labels"]
    first = np.asarray(raw["data"][0]).reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(images.load(0)), first)
    assert len(load_cifar("cifar100", cifar_root, "train")) == 60
    assert (images.name, images.split) == ("cifar100", "test")
    assert open_source("cifar100", cifar_root).fingerprint() == images.fingerprint()  # test is the default split


def test_clip_class_names_replace_underscores():
    raw = tuple(helpers.CIFAR100_CLASSES)
    expected = {
        "aquarium_fish": "aquarium fish",
        "lawn_mower": "lawn mower",
        "maple_tree": "maple tree",
        "oak_tree": "oak tree",
        "palm_tree": "palm tree",
        "pickup_truck": "pickup truck",
        "pine_tree": "pine tree",
        "sweet_pepper": "sweet pepper",
        "willow_tree": "willow tree",
    }
    for dataset in ("cifar100", None):  # the catalogue's CLIP names, and a dataset it does not know
        names = class_names(dataset, raw, "clip")
        changed = {r: c for r, c in zip(raw, names, strict=True) if r != c}
        assert changed == expected, dataset
    assert class_names(None, ("aquarium_fish",), "raw") == ["aquarium_fish"]
    assert class_names("cifar100", raw, "raw") == list(raw)
    with pytest.raises(ClipzsError, match="class-name style"):
        class_names(None, ("a",), "fancy")


def test_cifar10_batches_are_concatenated(tmp_path):
    helpers.write_cifar10(tmp_path, n_per_batch=4)
    train, test = load_cifar("cifar10", tmp_path, "train"), load_cifar("cifar10", tmp_path, "test")
    assert len(train) == 20 and len(test) == 4
    assert train.classes == tuple(helpers.CIFAR10_CLASSES)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_written_by_python3_with_bytes_keys_and_names_is_read(tmp_path, protocol):
    """Python 3 writers may store CIFAR's keys and class names as bytes (protocol 2 writes them via _codecs)."""
    helpers.write_cifar100(tmp_path, n_test=3, n_train=None)
    folder = tmp_path / "cifar-100-python"
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [c.encode() for c in helpers.CIFAR100_CLASSES]}, f, protocol=protocol)
    with open(folder / "test", "rb") as f:
        batch = pickle.load(f)
    with open(folder / "test", "wb") as f:
        pickle.dump({k.encode(): v for k, v in batch.items()}, f, protocol=protocol)
    images = load_cifar("cifar100", tmp_path, "test")
    assert images.classes == tuple(helpers.CIFAR100_CLASSES) and images.labels.tolist() == batch["fine_labels"]
    assert all(type(c) is str for c in images.classes)


@pytest.fixture
def cifar_archive(tmp_path, monkeypatch):
    """A CIFAR-100 archive written by the test, registered as the official one (URL and MD5)."""
    source = tmp_path / "source"
    helpers.write_cifar100(source, n_test=12, n_train=4)
    archive = helpers.tar_folder(source / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    md5 = file_digest(archive, "md5")
    monkeypatch.setitem(CIFAR, "cifar100", dataclasses.replace(CIFAR["cifar100"], md5=md5))
    return archive


def test_archive_in_root_is_verified_and_extracted(tmp_path, cifar_archive):
    root = tmp_path / "root"
    root.mkdir()
    (root / cifar_archive.name).write_bytes(cifar_archive.read_bytes())
    assert len(load_cifar("cifar100", root, "test")) == 12
    assert (root / "cifar-100-python" / "meta").is_file()


def test_archive_with_wrong_md5_is_refused(tmp_path, cifar_archive):
    root = tmp_path / "root"
    root.mkdir()
    (root / cifar_archive.name).write_bytes(cifar_archive.read_bytes()[:-10])
    with pytest.raises(ClipzsError, match="wrong MD5"):
        load_cifar("cifar100", root)


def test_missing_data_is_downloaded_and_verified(tmp_path, cifar_archive, monkeypatch):
    with helpers.FileServer({cifar_archive.name: cifar_archive.read_bytes()}) as server:
        spec = dataclasses.replace(CIFAR["cifar100"], url=server.url(cifar_archive.name))
        monkeypatch.setitem(CIFAR, "cifar100", spec)
        assert len(load_cifar("cifar100", tmp_path / "fresh", "test")) == 12
        assert len(load_cifar("cifar100", tmp_path / "fresh", "train")) == 4
    assert server.requests == [cifar_archive.name]


def test_missing_data_is_not_downloaded_when_download_is_off(tmp_path, cifar_archive, monkeypatch):
    with helpers.FileServer({cifar_archive.name: cifar_archive.read_bytes()}) as server:
        spec = dataclasses.replace(CIFAR["cifar100"], url=server.url(cifar_archive.name))
        monkeypatch.setitem(CIFAR, "cifar100", spec)
        with pytest.raises(ClipzsError, match="not found"):
            open_source("cifar100", tmp_path / "fresh", "test", download=False)
    assert server.requests == []


def test_missing_data_without_network_is_one_clear_error(tmp_path, monkeypatch):
    url = helpers.refused_url("cifar-100-python.tar.gz")
    monkeypatch.setitem(CIFAR, "cifar100", dataclasses.replace(CIFAR["cifar100"], url=url))
    with pytest.raises(ClipzsError) as error:
        load_cifar("cifar100", tmp_path)
    message = str(error.value)
    assert url in message and str(tmp_path / "cifar-100-python.tar.gz") in message and "\n" not in message
    assert not list(tmp_path.iterdir())


def test_unsafe_pickle_in_dataset_is_refused(tmp_path):
    helpers.write_cifar100(tmp_path, n_test=2, n_train=2)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": Evil()}, f)
    with pytest.raises(ClipzsError, match="refusing to unpickle builtins.print"):
        load_cifar("cifar100", tmp_path)


def test_unknown_split_and_dataset(cifar_root):
    with pytest.raises(ClipzsError, match="split 'val'") as error:
        load_cifar("cifar100", cifar_root, "val")
    message = str(error.value)
    assert "train" in message and "test" in message and "\n" not in message
    with pytest.raises(ClipzsError, match="unknown dataset 'no-such-set'"):
        open_source("no-such-set")


def test_image_folder_reads_classes_and_any_image_mode(tmp_path):
    for cls, mode in (("cat", "RGB"), ("dog", "L"), ("lawn_mower", "RGBA"), ("zebra", "P")):
        (tmp_path / cls).mkdir()
        Image.new(mode, (20, 10), 100).save(tmp_path / cls / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "b.jpg")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    images = load_folder(tmp_path)
    assert images.classes == ("cat", "dog", "lawn_mower", "zebra")
    assert images.labels.tolist() == [0, 0, 1, 2, 3]
    assert all(images.load(i).mode == "RGB" for i in range(len(images)))
    assert open_source("folder", tmp_path).classes == images.classes
    assert images.item_name(1) == str(tmp_path / "cat" / "b.jpg")


def test_image_folder_split_subfolder_and_errors(tmp_path):
    (tmp_path / "val" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "cat" / "x.png")
    assert load_folder(tmp_path, "val").classes == ("cat",)
    with pytest.raises(ClipzsError, match="no images found"):
        load_folder(tmp_path / "val" / "cat")
    with pytest.raises(ClipzsError, match="needs data_root"):
        open_source("folder")


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(tmp_path / "mid.png")
    assert np.asarray(load_rgb(tmp_path / "deep.png")).min() == 255
    assert np.asarray(load_rgb(tmp_path / "mid.png")).max() == 128


def test_subset_keeps_order(cifar_root):
    images = load_cifar("cifar100", cifar_root)
    part = images.subset([5, 2])
    assert part.labels.tolist() == [images.labels[5], images.labels[2]]
    assert np.array_equal(part.pixels[1], images.pixels[2])
    assert np.array_equal(np.asarray(part.load(1)), images.pixels[2])
