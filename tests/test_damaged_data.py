"""Damaged or surprising dataset files, as a hostile tester wrote them: each is one ClipzsError naming the file and
what is wrong (or an unreadable image, left out by name), never a traceback, a hang or silently other data."""

from __future__ import annotations

import os
import pickle

import helpers
import numpy as np
import pytest
from wds_helpers import encode, pixels, write_class_folders, write_wds

from clipzs.errors import ClipzsError
from clipzs.sources import ArraySource, UnreadableImage
from clipzs.sources.base import load_rgb
from clipzs.sources.cifar import load_cifar
from clipzs.sources.folder import load_folder
from clipzs.sources.table import load_table
from clipzs.sources.wds import load_wds


def write_table(folder, rows: list[tuple[str, str]], classnames: bytes | None = None):
    """A CSV table of (path, label) rows beside one real image, `a.png`, and optionally a classnames.txt."""
    write_class_folders(folder, {"img": 1}, suffix=".png")
    (folder / "t.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    if classnames is not None:
        (folder / "classnames.txt").write_bytes(classnames)
    return folder / "t.csv"


@pytest.mark.parametrize("label", [10**12, 10**20])
def test_a_table_label_far_beyond_any_class_count_is_refused_not_listed(tmp_path, label):
    table = write_table(tmp_path, [("img/0.png", "0"), ("img/0.png", str(label))])
    with pytest.raises(ClipzsError, match=rf"t\.csv, row 2: label {label} is not a class index below 1000000 "):
        load_table(table, "csv")


def test_classnames_txt_that_is_not_utf8_is_one_error(tmp_path):
    table = write_table(tmp_path, [("img/0.png", "0")], classnames=b"caf\xe9\n")
    with pytest.raises(ClipzsError, match=r"^cannot read .*classnames\.txt: 'utf-8' codec"):
        load_table(table, "csv")


def test_a_named_pipe_is_an_unreadable_image_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    table = write_table(tmp_path, [("img/0.png", "0"), ("pipe.png", "0")])
    with pytest.warns(match="1 of the 2 image files .* do not exist as files"):
        source = load_table(table, "csv")
    with pytest.raises(UnreadableImage, match="pipe.png: not a regular file$"):
        source.load(1)
    with pytest.raises(UnreadableImage, match="not a regular file$"):
        load_rgb(tmp_path / "img")


def test_a_mistyped_split_is_refused_where_the_root_holds_split_folders(tmp_path):
    for split in ("train", "test"):
        write_class_folders(tmp_path / split, {"cat": 1, "dog": 1}, suffix=".png")
    with pytest.raises(ClipzsError, match=r"^split 'tset' not found: no folder .*tset \(found test, train\)$"):
        load_folder(tmp_path, "tset")
    assert load_folder(tmp_path, "test").classes == ("cat", "dog")
    plain = write_class_folders(tmp_path / "plain", {"cat": 1, "train": 1}, suffix=".png")  # CIFAR-100 has "train"
    assert load_folder(plain, "test").classes == ("cat", "train")  # class folders at the root: the split is a label


def test_a_class_folder_that_cannot_be_listed_is_an_error_not_an_empty_class(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path, {"cat": 2, "dog": 2}, suffix=".png")
    scandir = os.scandir

    def refuse_cat(path="."):
        if os.fspath(path).endswith("cat"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_cat)  # as a folder of mode 000 is to a user who is not root
    with pytest.raises(ClipzsError, match=r"^cannot list .*cat: Permission denied$"):
        load_folder(root)


def test_a_file_name_that_is_not_utf8_is_read_and_fingerprinted(tmp_path):
    root = write_class_folders(tmp_path, {"cat": 1}, suffix=".png")
    os.rename(root / "cat" / "0.png", os.fsencode(root / "cat") + b"/\xff.png")
    source = load_folder(root)
    assert len(source) == 1 and len(source.fingerprint()) == 64
    assert source.load(0).size == (6, 5)


def test_fewer_labels_than_images_is_an_error_naming_the_set():
    with pytest.raises(ClipzsError, match=r"^stl10 test: 6 images but 3 labels; the files are damaged$"):
        ArraySource("stl10", "test", ["a"], np.zeros(3), np.zeros((6, 4, 4, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        ([1, 2, 3], "it holds a list, not a dict"),
        ({"data": np.zeros((2, 3072), dtype=np.uint8), "fine_labels": ["a", "b"]}, "invalid literal for int()"),
        ({"data": [[0] * 3072, [0]], "fine_labels": [0, 1]}, "inhomogeneous"),
    ],
)
def test_a_cifar_batch_with_other_contents_is_not_in_cifar_format(tmp_path, batch, words):
    folder = helpers.write_cifar100(tmp_path, n_test=4, n_train=None)
    with open(folder / "test", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(ClipzsError, match="is not in CIFAR format: ") as error:
        load_cifar("cifar100", tmp_path, "test", download=False)
    assert words in str(error.value)


def wds_set(root, classnames: list[str]):
    samples = [(f"s{i}", "png", encode(pixels(i)), i % 2) for i in range(4)]
    return write_wds(root, samples, [4], classnames, templates=["a photo of a {c}."])


def test_a_wds_templates_file_that_is_there_but_unreadable_is_an_error_not_the_imagenet_templates(tmp_path):
    root = wds_set(tmp_path, ["cat", "dog"])
    assert load_wds(root).templates == ("a photo of a {}.",)
    (root / "zeroshot_classification_templates.txt").write_bytes(b"\xf6 {c}\n")
    with pytest.raises(ClipzsError, match=r"^cannot read .*zeroshot_classification_templates\.txt: 'utf-8' codec"):
        load_wds(root)
    (root / "zeroshot_classification_templates.txt").unlink()
    assert load_wds(root).templates is None  # absent: the catalogue's or CLIP's generic templates are used


def test_a_blank_wds_class_name_is_refused_and_repeated_names_are_kept(tmp_path):
    with pytest.raises(ClipzsError, match=r"classnames\.txt must name one class per line, without blank lines$"):
        load_wds(wds_set(tmp_path / "blank", ["cat", "", "dog"]))
    assert load_wds(wds_set(tmp_path / "twice", ["missile", "missile"])).classes == ("missile", "missile")
