"""Image sources: the base classes, ImageNet-family folders, CLIP_benchmark webdatasets and CSV/parquet tables,
each layout written by the test itself."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
from helpers import FileServer
from PIL import Image
from wds_helpers import NAMES, WNIDS, encode, imagenet_entry, pixels, write_class_folders, write_wds

from clipzs import catalogue
from clipzs.errors import ClipzsError, ClipzsWarning
from clipzs.sources import (
    ArraySource,
    PathSource,
    Subset,
    UnreadableImage,
    decode,
    open_source,
    to_rgb,
)
from clipzs.sources import wds as wds_source
from clipzs.sources.folder import load_folder


def as_array(image) -> np.ndarray:
    assert not isinstance(image, UnreadableImage), image
    return np.asarray(image)


# ---------------------------------------------------------------- base classes


def test_to_rgb_converts_every_mode_and_scales_16_bit():
    gray16 = Image.fromarray(np.array([[0, 65535], [257, 32896]], dtype=np.uint16))
    assert np.asarray(to_rgb(gray16))[..., 0].tolist() == [[0, 255], [1, 128]]
    for image in (Image.new("P", (3, 2)), Image.new("RGBA", (3, 2)), Image.new("L", (3, 2))):
        assert to_rgb(image).mode == "RGB"


def test_decode_names_the_image_it_cannot_read():
    with pytest.raises(UnreadableImage, match="cannot read image sample-7: ") as info:
        decode(b"not an image", "sample-7")
    assert info.value.name == "sample-7" and "\n" not in info.value.reason
    assert info.value.reason == "cannot identify image file"  # without the repr of an in-memory file
    assert as_array(decode(encode(pixels(1)), "ok")).tolist() == pixels(1).tolist()


def test_array_source_loads_subsets_and_fingerprints_its_pixels():
    images = np.stack([pixels(k) for k in range(4)])
    source = ArraySource("toy", "test", ["a", "b"], np.array([0, 1, 1, 0]), images)
    assert len(source) == 4 and source.random_access and source.pixels is not None
    assert as_array(source.load(2)).tolist() == images[2].tolist()
    sub = source.subset([1, 3])
    assert sub.labels.tolist() == [1, 0] and as_array(sub.load(1)).tolist() == images[3].tolist()
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    other = ArraySource("toy", "test", ["a", "b"], source.labels, changed)
    assert other.fingerprint() != source.fingerprint()
    assert ArraySource("toy", "test", ["a", "b"], source.labels, images).fingerprint() == source.fingerprint()


def test_path_source_reports_unreadable_files_and_tracks_changes(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(pixels(0)).save(good)
    bad.write_bytes(b"\x89PNG broken")
    source = PathSource("files", "", ["x"], np.zeros(3, np.int64), [good, bad, tmp_path / "gone.png"])
    out = list(source.read(range(3)))
    assert [i for i, _ in out] == [0, 1, 2]
    assert as_array(out[0][1]).tolist() == pixels(0).tolist()
    assert isinstance(out[1][1], UnreadableImage) and out[1][1].name == str(bad)
    assert isinstance(out[2][1], UnreadableImage) and out[2][1].name == str(tmp_path / "gone.png")
    before = source.fingerprint()
    os.utime(good, ns=(1, 1))
    assert source.fingerprint() != before
    assert source.subset([2]).item_name(0) == str(tmp_path / "gone.png")


def test_subset_reads_in_order_and_keeps_what_describes_the_set():
    images = np.stack([pixels(k) for k in range(5)])
    base = ArraySource("toy", "test", ["a"], np.zeros(5, np.int64), images)
    base.note, base.templates = "a note", ("a {}",)
    sub = Subset(base, np.array([1, 3, 4]))
    assert [i for i, _ in sub.read([0, 2])] == [0, 2]
    assert [as_array(im).tolist() for _, im in sub.read([0, 2])] == [images[1].tolist(), images[4].tolist()]
    assert (sub.note, sub.templates, sub.item_name(1)) == ("a note", ("a {}",), "toy/test image 3")
    assert sub.fingerprint() != Subset(base, np.array([1, 3])).fingerprint()
    with pytest.raises(ValueError, match="increasing"):
        Subset(base, np.array([3, 1]))


# ---------------------------------------------------------------- ImageNet-family folders

IMAGENET = imagenet_entry("fake-imagenet", WNIDS, NAMES, splits=("val", "train"), default_split="val", folder="inet")
IMAGENET_V2 = imagenet_entry("fake-v2", WNIDS, NAMES, folder="v2-folder")
SUBSET = (1, 3, 4)  # an -R-style entry: 3 of the 5 classes
IMAGENET_R = imagenet_entry(
    "fake-r",
    tuple(WNIDS[i] for i in SUBSET),
    tuple(NAMES[i] for i in SUBSET),
    title="Fake ImageNet-R",
    subset_of="fake-imagenet",
    subset_indices=SUBSET,
    note="scored over its 3 classes",
)


@pytest.fixture
def fake_catalogue(monkeypatch):
    entries = {e.name: e for e in (IMAGENET, IMAGENET_V2, IMAGENET_R)}
    monkeypatch.setattr(catalogue, "get", lambda name: entries[name])


def test_imagenet_val_matches_the_same_folder_read_generically(tmp_path, fake_catalogue):
    counts = {wnid: 1 + k % 2 for k, wnid in enumerate(WNIDS)}
    write_class_folders(tmp_path / "inet" / "val", counts)
    source = open_source("fake-imagenet", tmp_path)
    generic = load_folder(tmp_path / "inet", "val")
    assert (source.name, source.split, source.classes) == ("fake-imagenet", "val", NAMES)
    assert source.labels.tolist() == generic.labels.tolist() == [0, 1, 1, 2, 3, 3, 4]
    for (i, image), (_, same) in zip(source.read(range(len(source))), generic.read(range(len(generic))), strict=True):
        assert np.array_equal(as_array(image), as_array(same)), i
    for root in (tmp_path / "inet", tmp_path / "inet" / "val"):  # the root may also name the folder or the split
        assert open_source("fake-imagenet", root).paths == source.paths
    with pytest.raises(ClipzsError, match=f"fake-imagenet train not found: .* in {tmp_path / 'inet' / 'train'}, or"):
        open_source("fake-imagenet", tmp_path, "train")
    with pytest.raises(ClipzsError, match="fake-imagenet train not found"):
        open_source("fake-imagenet", tmp_path / "inet" / "val", "train")  # a val folder is never read as train


def test_imagenet_v2_index_folders_are_labels(tmp_path, fake_catalogue):
    write_class_folders(tmp_path / "v2-folder", {"3": 1, "0": 2, "4": 1, "1": 1, "2": 1}, suffix=".jpeg")
    source = open_source("fake-v2", tmp_path)
    assert source.labels.tolist() == [0, 0, 1, 2, 3, 4] and source.split == "test"
    assert source.item_name(0).endswith(os.path.join("v2-folder", "0", "0.jpeg"))
    assert open_source("fake-v2", tmp_path / "v2-folder").paths == source.paths
    shutil.move(tmp_path / "v2-folder" / "4", tmp_path / "v2-folder" / "5")
    with pytest.raises(ClipzsError, match=r"class-index folders outside 0..4 of fake-v2: 5$"):
        open_source("fake-v2", tmp_path)
    shutil.move(tmp_path / "v2-folder" / "5", tmp_path / "v2-folder" / "004")
    with pytest.raises(ClipzsError, match=r"class-index folders with leading zeros \(write 7, not 007\): 004$"):
        open_source("fake-v2", tmp_path)


def test_imagenet_r_style_subset_labels_index_its_own_classes(tmp_path, fake_catalogue):
    write_class_folders(tmp_path / "fake-r", {WNIDS[i]: 2 for i in SUBSET})
    source = open_source("fake-r", tmp_path)
    assert source.classes == IMAGENET_R.classes and source.note == "scored over its 3 classes"
    assert source.labels.tolist() == [0, 0, 1, 1, 2, 2]
    write_class_folders(tmp_path / "fake-r", {WNIDS[0]: 1})
    with pytest.raises(ClipzsError, match=f"not Fake ImageNet-R classes: {WNIDS[0]}$"):
        open_source("fake-r", tmp_path)


def test_imagenet_partial_copy_is_scored_over_every_class_with_a_note(tmp_path, fake_catalogue):
    write_class_folders(tmp_path / "val", {WNIDS[0]: 1, WNIDS[2]: 1})
    (tmp_path / "val" / WNIDS[4]).mkdir()  # an empty class folder counts as missing too
    with pytest.warns(ClipzsWarning, match="3 of 5 classes have no images"):
        source = open_source("fake-imagenet", tmp_path)
    assert source.labels.tolist() == [0, 2] and len(source.classes) == 5
    assert f"({WNIDS[1]}, {WNIDS[3]}, {WNIDS[4]})" in source.note and "not comparable" in source.note


def test_imagenet_missing_data_and_bad_split_are_one_line_errors(tmp_path, fake_catalogue):
    with pytest.raises(ClipzsError, match=f"Fake ImageNet-R test not found: .* in {tmp_path / 'fake-r'}, or") as e:
        open_source("fake-r", tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ClipzsError, match="split 'test' is not one of fake-imagenet's: val, train"):
        open_source("fake-imagenet", tmp_path, "test")
    write_class_folders(tmp_path / "val", {WNIDS[0]: 1, "3": 1})
    with pytest.raises(ClipzsError, match="mixes wnid folders"):
        open_source("fake-imagenet", tmp_path)


def test_real_catalogue_imagenet_entries(tmp_path):
    """The packaged ImageNet-family entries, each read from a copy of two of its classes."""
    r, v2, a = (catalogue.get(name) for name in ("imagenet_r", "imagenetv2", "imagenet_a"))
    write_class_folders(tmp_path / "imagenet-r", {r.wnids[7]: 1, r.wnids[199]: 1})
    with pytest.warns(ClipzsWarning, match="198 of 200 classes have no images"):
        source = open_source("imagenet_r", tmp_path)
    assert source.labels.tolist() == [7, 199] and source.classes == r.classes and source.note.startswith(r.note)
    write_class_folders(tmp_path / v2.folder, {"0": 1, "999": 1})
    with pytest.warns(ClipzsWarning, match="998 of 1000"):
        assert open_source("imagenetv2", tmp_path).labels.tolist() == [0, 999]
    write_class_folders(tmp_path / "imagenet-a", {r.wnids[7]: 1} if r.wnids[7] not in a.wnids else {"n01440764": 1})
    with pytest.raises(ClipzsError, match="not ImageNet-A classes"):
        open_source("imagenet_a", tmp_path)
    for name in ("imagenet1k", "imagenet_sketch"):
        with pytest.raises(ClipzsError, match=f"{catalogue.get(name).title} .* not found"):
            open_source(name, tmp_path)


# ---------------------------------------------------------------- CLIP_benchmark webdatasets

CLASSES = ["apple", "banana", "cherry"]
TEMPLATES = ["a photo of a {c}.", "a {c} on a table."]
LABELS = [2, 0, 1, 1, 0, 2, 2, 1]
CORRUPT = 4  # sample 4 holds bytes that are not an image


@pytest.fixture
def wds_root(tmp_path):
    samples = [
        (f"s{i:07d}", "png", b"not an image" if i == CORRUPT else encode(pixels(i)), label)
        for i, label in enumerate(LABELS)
    ]
    return write_wds(tmp_path / "wds", samples, [3, 3, 2], CLASSES, TEMPLATES)


def test_wds_labels_names_templates_and_samples(wds_root):
    source = open_source("wds", wds_root)
    assert (source.name, source.split, len(source), source.random_access) == ("wds", "test", 8, False)
    assert source.labels.tolist() == LABELS and source.classes == tuple(CLASSES)
    assert source.templates == ("a photo of a {}.", "a {} on a table.")
    assert source.shards == tuple(str(wds_root / "test" / f"{n}.tar") for n in range(3))
    assert source.shard_of.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert source.sample(4) == (str(wds_root / "test" / "1.tar"), "s0000004")
    assert source.item_name(4) == f"s0000004 in {wds_root / 'test' / '1.tar'}"


def test_wds_pixels_equal_the_same_images_read_from_a_folder(wds_root, tmp_path):
    folder = tmp_path / "folder"
    for i, label in enumerate(LABELS):
        if i != CORRUPT:
            (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            (folder / CLASSES[label] / f"{i}.png").write_bytes(encode(pixels(i)))
    generic = load_folder(folder)
    by_name = {int(os.path.basename(p)[:-4]): k for k, p in enumerate(generic.paths)}
    out = list(open_source("wds", wds_root).read(range(8)))
    assert [i for i, _ in out] == list(range(8))
    for i, image in out:
        if i == CORRUPT:
            assert isinstance(image, UnreadableImage) and "s0000004 in" in image.name and "1.tar" in image.name
        else:
            assert np.array_equal(as_array(image), as_array(generic.load(by_name[i])))
            assert LABELS[i] == generic.labels[by_name[i]]


def test_wds_read_decodes_only_the_wanted_samples(wds_root, monkeypatch):
    decoded = []

    def counting(data, name):
        decoded.append(name.split()[0])
        return decode(data, name)

    monkeypatch.setattr(wds_source, "decode", counting)
    source = open_source("wds", wds_root)
    assert decoded == []  # the index pass decodes nothing
    assert [i for i, _ in source.read([5, 6, 7])] == [5, 6, 7]
    assert decoded == ["s0000005", "s0000006", "s0000007"]
    decoded.clear()
    sub = source.subset([1, 5, 6])
    assert sub.labels.tolist() == [0, 2, 2]
    out = list(sub.read(range(3)))
    assert [i for i, _ in out] == [0, 1, 2] and decoded == ["s0000001", "s0000005", "s0000006"]
    assert np.array_equal(as_array(out[1][1]), pixels(5))
    decoded.clear()
    stream = source.read(range(8))
    next(stream)
    stream.close()  # a reader that stops early leaves nothing open and decodes nothing more
    assert decoded == ["s0000000"]


@pytest.mark.parametrize("form", ["brace", "file-url", "pipe"])
def test_wds_shard_patterns_and_urls_read_the_same(wds_root, form):
    shards = f"{wds_root}/test/{{0..2}}.tar"
    root = {"brace": shards, "file-url": f"file://{wds_root}", "pipe": f"pipe:cat {shards}"}[form]
    source, reference = open_source("wds", root), open_source("wds", wds_root)
    assert source.labels.tolist() == LABELS and source.templates == reference.templates
    assert source.keys == reference.keys and source.classes == reference.classes
    out = dict(source.read([0, 3, 7]))
    assert all(np.array_equal(as_array(out[i]), pixels(i)) for i in (0, 3, 7))
    if form == "pipe":
        assert source.shards[1] == f"pipe:cat {wds_root}/test/1.tar"
        assert source.fingerprint() != reference.fingerprint()
    else:
        assert source.fingerprint() == reference.fingerprint()


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http URLs with curl")
def test_wds_over_http(wds_root):
    files = {p.name: p.read_bytes() for p in [*wds_root.glob("*.txt"), *(wds_root / "test").iterdir()]}
    del files["zeroshot_classification_templates.txt"]  # optional: a 404 means the dataset has no templates
    with FileServer(files) as server:
        source = open_source("wds", server.url("ds"))
        assert source.labels.tolist() == LABELS and source.shards[0] == server.url("ds/test/0.tar")
        assert source.templates is None
        out = dict(source.read([1, 2]))
        with pytest.raises(ClipzsError, match=r"cannot read shard .*/ds/test/3.tar: curl exited with status 22$"):
            open_source("wds", server.url("ds/test/{0..3}.tar"))  # the server has no 3.tar
    assert np.array_equal(as_array(out[2]), pixels(2))


def test_wds_text_files_sit_beside_the_split_folder_of_any_shard_pattern():
    tree = "https://huggingface.co/datasets/clip-benchmark/wds_cifar10/tree/main"
    assert wds_source.hub_url(tree) == "https://huggingface.co/datasets/clip-benchmark/wds_cifar10/resolve/main"
    split, shards, (prefix, suffix) = wds_source.locate("pipe:aws s3 cp s3://b/ds/val/{0..1}.tar -", "test")
    assert (split, shards) == ("val", ["pipe:aws s3 cp s3://b/ds/val/0.tar -", "pipe:aws s3 cp s3://b/ds/val/1.tar -"])
    assert prefix + "classnames.txt" + suffix == "pipe:aws s3 cp s3://b/ds/classnames.txt -"
    split, shards, (prefix, suffix) = wds_source.locate("/d/ds/test/{0..1}.tar::/e/ds/test/5.tar", None)
    assert shards == ["/d/ds/test/0.tar", "/d/ds/test/1.tar", "/e/ds/test/5.tar"] and (prefix, suffix) == ("/d/ds/", "")
    with pytest.raises(ClipzsError, match="expected shards as <root>/<split>/<shard>.tar"):
        wds_source.locate("0.tar", None)


def test_wds_fingerprint_follows_the_shards(wds_root):
    before = open_source("wds", wds_root).fingerprint()
    assert open_source("wds", wds_root).fingerprint() == before
    shard = wds_root / "test" / "2.tar"
    os.utime(shard, ns=(1, 1))
    assert open_source("wds", wds_root).fingerprint() != before


def test_wds_shard_gone_after_indexing_is_a_one_line_error(wds_root):
    source = open_source("wds", wds_root)
    (wds_root / "test" / "1.tar").unlink()
    assert [i for i, _ in source.read([0, 1])] == [0, 1]
    with pytest.raises(ClipzsError, match="cannot read shard .*1.tar: .*No such file"):
        list(source.read([2, 3]))


def test_wds_sample_without_image_is_unreadable_and_without_label_is_refused(tmp_path):
    root = write_wds(
        tmp_path / "a", [("k0", "jpg", None, 0), ("k1", "jpg", encode(pixels(1), "JPEG"), 1)], [2], CLASSES
    )
    source = open_source("wds", root)
    assert source.templates is None
    (_, first), (_, second) = source.read([0, 1])
    assert isinstance(first, UnreadableImage) and "no .webp, .png, .jpg or .jpeg image" in first.reason
    assert as_array(second).shape == (5, 6, 3)
    root = write_wds(tmp_path / "b", [("k0", "png", encode(pixels(0)), None)], [1], CLASSES)
    with pytest.raises(ClipzsError, match="sample k0 in .*0.tar has no .cls label"):
        open_source("wds", root)


def test_wds_errors_are_one_line(tmp_path, wds_root):
    with pytest.raises(ClipzsError, match="needs --data-root"):
        open_source("wds", None)
    with pytest.raises(ClipzsError, match=f"split 'train' not found: expected {wds_root}/train/nshards.txt"):
        open_source("wds", wds_root, "train")
    (wds_root / "classnames.txt").write_text("apple\nbanana\n")
    with pytest.raises(ClipzsError, match="s0000000 in .*0.tar: label 2 is not below the 2 classes of"):
        open_source("wds", wds_root)
    (wds_root / "classnames.txt").unlink()
    with pytest.raises(ClipzsError, match="cannot read .*classnames.txt: "):
        open_source("wds", wds_root)
    (wds_root / "classnames.txt").write_text("x\ny\nz\n")
    (wds_root / "test" / "1.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(ClipzsError, match="cannot read shard .*1.tar: ") as e:
        open_source("wds", wds_root)
    assert "\n" not in str(e.value)


def test_wds_without_nshards_lists_local_shards_in_numeric_order(tmp_path):
    samples = [(f"k{i}", "png", encode(pixels(i)), i % 3) for i in range(11)]
    root = write_wds(tmp_path / "ds", samples, [1] * 11, CLASSES)
    (root / "test" / "nshards.txt").unlink()
    source = open_source("wds", root)
    assert source.keys == tuple(f"k{i}" for i in range(11))


# ---------------------------------------------------------------- CSV and parquet tables


def write_images(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.fromarray(pixels(k)).save(folder / f"{k}.png")


def write_csv(path, rows, header="path,label"):
    path.write_text("\n".join([header, *(",".join(map(str, row)) for row in rows)]) + "\n")
    return path


def test_csv_with_class_names_and_relative_paths(tmp_path):
    write_images(tmp_path / "img", 4)
    table = write_csv(tmp_path / "t.csv", [("img/0.png", "dog"), ("img/1.png", "cat"), (tmp_path / "img/2.png", "dog")])
    source = open_source("csv", table)
    assert (source.name, source.classes, source.labels.tolist()) == ("csv", ("cat", "dog"), [1, 0, 1])
    assert source.paths[0] == str(tmp_path / "img" / "0.png")
    assert np.array_equal(as_array(source.load(2)), pixels(2))
    (tmp_path / "classnames.txt").write_text("dog\ncat\nbird\n")  # the classes and their order, when given
    assert open_source("csv", table).labels.tolist() == [0, 1, 0]
    assert open_source("csv", table).classes == ("dog", "cat", "bird")


def test_csv_with_indices_and_optional_classnames(tmp_path):
    write_images(tmp_path, 3)
    table = write_csv(tmp_path / "t.csv", [("0.png", 2), ("1.png", 0), ("2.png", 2)])
    source = open_source("csv", table)
    assert source.classes == ("0", "1", "2") and source.labels.tolist() == [2, 0, 2]
    (tmp_path / "classnames.txt").write_text("a\nb\nc\nd\n")
    assert open_source("csv", table).classes == ("a", "b", "c", "d")


def test_table_missing_image_is_unreadable_when_read(tmp_path):
    write_images(tmp_path, 1)
    table = write_csv(tmp_path / "t.csv", [("0.png", "a"), ("gone.png", "b")])
    with pytest.warns(ClipzsWarning, match="1 of the 2 image files .* do not exist"):
        source = open_source("csv", table)
    (_, ok), (_, gone) = source.read([0, 1])
    assert as_array(ok).shape == (5, 6, 3) and isinstance(gone, UnreadableImage)
    assert gone.name == str(tmp_path / "gone.png")
    with pytest.raises(ClipzsError, match="none of the 1 image files"):
        open_source("csv", write_csv(tmp_path / "u.csv", [("gone.png", "a")]))


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("path,class", [("0.png", "a")], "must have exactly the columns path and label .found: path, class"),
        ("path,label,split", [("0.png", "a", "test")], "exactly the columns path and label"),
        ("path,label", [("0.png", "")], "row 1: no label"),
        ("path,label", [("", "a")], "row 1: no path"),
        ("path,label", [("0.png", "a", "x")], "line 2: 3 fields, expected 2"),
        ("path,label", [], "has no rows"),
    ],
)
def test_csv_errors(tmp_path, header, rows, message):
    write_images(tmp_path, 1)
    with pytest.raises(ClipzsError, match=message):
        open_source("csv", write_csv(tmp_path / "t.csv", rows, header))


def test_csv_label_errors(tmp_path):
    write_images(tmp_path, 2)
    (tmp_path / "classnames.txt").write_text("a\nb\n")
    with pytest.raises(ClipzsError, match="row 2: label 2 is not a class index below 2"):
        open_source("csv", write_csv(tmp_path / "t.csv", [("0.png", 1), ("1.png", 2)]))
    with pytest.raises(ClipzsError, match="row 2: label 'c' is not in .*classnames.txt"):
        open_source("csv", write_csv(tmp_path / "t.csv", [("0.png", "a"), ("1.png", "c")]))
    with pytest.raises(ClipzsError, match="table not found: .*nope.csv"):
        open_source("csv", tmp_path / "nope.csv")


def test_parquet_tables(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    write_images(tmp_path / "img", 3)
    paths = ["img/0.png", "img/1.png", "img/2.png"]
    pq.write_table(pa.table({"path": paths, "label": [1, 0, 1]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"label": ["b", "a", "b"], "path": paths}), tmp_path / "names.parquet")
    ints, names = open_source("parquet", tmp_path / "ints.parquet"), open_source("parquet", tmp_path / "names.parquet")
    assert ints.labels.tolist() == names.labels.tolist() == [1, 0, 1] and names.classes == ("a", "b")
    assert ints.paths == names.paths and np.array_equal(as_array(ints.load(1)), pixels(1))
    pq.write_table(pa.table({"path": paths, "label": [0.0, 1.0, 1.0]}), tmp_path / "floats.parquet")
    with pytest.raises(ClipzsError, match="column label holds double; expected integer class indices or class names"):
        open_source("parquet", tmp_path / "floats.parquet")
    pq.write_table(pa.table({"path": paths}), tmp_path / "short.parquet")
    with pytest.raises(ClipzsError, match=r"exactly the columns path and label \(found: path\)"):
        open_source("parquet", tmp_path / "short.parquet")
    pq.write_table(pa.table({"path": paths, "label": [1, None, 0]}), tmp_path / "null.parquet")
    with pytest.raises(ClipzsError, match="row 2: no label"):
        open_source("parquet", tmp_path / "null.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(ClipzsError, match="cannot read table .*broken.parquet"):
        open_source("parquet", tmp_path / "broken.parquet")


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ClipzsError, match=r"pip install 'clipzs\[parquet\]'"):
        open_source("parquet", tmp_path / "t.parquet")
