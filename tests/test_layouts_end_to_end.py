"""Each on-disk layout, written here, evaluated end to end: the same results as its images read as a plain folder."""

import json

import helpers
import numpy as np
import pytest
from test_torchvision_sets import write_food101, write_stl10
from wds_helpers import NAMES, WNIDS, encode, imagenet_entry, write_class_folders, write_wds

from clipzs import catalogue
from clipzs.pipeline import evaluate
from clipzs.sources import open_source


def as_folder(source, root):
    """The source's images as PNG files in label folders `000`, `001`, ... (so folder order is label order), and
    the order that sorts the source's images into the folder's."""
    for label in range(len(source.classes)):  # every class, with images or not
        (root / f"{label:03d}").mkdir(parents=True)
    order = np.argsort(source.labels, kind="stable")
    for position, i in enumerate(order.tolist()):
        (_, image), *_ = source.read([i])
        image.save(root / f"{source.labels[i]:03d}" / f"{position:04d}.png")
    return root, order


def outcome(result, order=None):
    """What must agree: every row's accuracies and the best ensemble with its predictions (in folder order)."""
    rows = [(r.method, r.templates, r.acc1, r.acc5, r.mean_per_class_recall) for r in result.ensembles + result.single]
    pred = np.asarray(result.best.pred)
    return rows, result.best.method, result.best.templates, (pred if order is None else pred[order]).tolist()


def same_results_as_a_folder(dataset, data_root, tiny_config, tiny_checkpoint, tmp_path) -> None:
    source = open_source(dataset, data_root)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({dataset: list(source.classes), "folder": list(source.classes)}))
    options = dict(
        model=str(tiny_config),
        pretrained=str(tiny_checkpoint),
        feature_cache=tmp_path / "features",
        progress=False,
        templates="seed",
        classnames=str(names),
        ensemble="all",
    )
    layout = evaluate(dataset=dataset, data_root=data_root, **options)
    folder, order = as_folder(source, tmp_path / "folder")
    plain = evaluate(dataset="folder", data_root=folder, **options)
    assert layout.run.encoded["images"] == len(source) == plain.run.encoded["images"]
    assert len(set(layout.best.pred)) > 1  # not degenerate
    assert outcome(layout, order) == outcome(plain)


def rng_pixels(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Images of different colours with some noise: a random tiny model tells them apart."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(colours + rng.integers(-20, 21, (n, *size, 3)), 0, 255).astype(np.uint8)


def test_cifar10(tiny_config, tiny_checkpoint, tmp_path):
    helpers.write_cifar10(tmp_path / "data", n_per_batch=4)
    same_results_as_a_folder("cifar10", tmp_path / "data", tiny_config, tiny_checkpoint, tmp_path)


def test_stl10_binary(tiny_config, tiny_checkpoint, tmp_path):
    (tmp_path / "data").mkdir()
    write_stl10(tmp_path / "data", "test", rng_pixels(12, (96, 96), 0), np.arange(12) % 10)
    same_results_as_a_folder("stl10", tmp_path / "data", tiny_config, tiny_checkpoint, tmp_path)


def test_food101(tiny_config, tiny_checkpoint, tmp_path):
    images = {name: list(rng_pixels(3, (40, 30), k)) for k, name in enumerate(("tacos", "pho", "apple_pie"))}
    write_food101(tmp_path / "data", images)
    same_results_as_a_folder("food101", tmp_path / "data", tiny_config, tiny_checkpoint, tmp_path)


def test_imagenet_val_folder(tiny_config, tiny_checkpoint, tmp_path, monkeypatch):
    entry = imagenet_entry("fake-imagenet", WNIDS, NAMES, splits=("val", "train"), default_split="val", folder="inet")
    monkeypatch.setattr(catalogue, "get", lambda name: entry if name == "fake-imagenet" else catalogue.find(name))
    write_class_folders(tmp_path / "data" / "inet" / "val", {wnid: 2 + k % 2 for k, wnid in enumerate(WNIDS)})
    same_results_as_a_folder("fake-imagenet", tmp_path / "data", tiny_config, tiny_checkpoint, tmp_path)


def test_webdataset_shards(tiny_config, tiny_checkpoint, tmp_path):
    pixels, labels = rng_pixels(10, (24, 20), 3), [3, 1, 4, 1, 0, 2, 2, 4, 0, 3]
    samples = [(f"k{i}", "webp" if i % 2 else "png", encode(pixels[i], "WEBP" if i % 2 else "PNG"), labels[i])
               for i in range(10)]  # fmt: skip
    write_wds(tmp_path / "data", samples, [4, 4, 2], ["ant", "bee", "cat", "dog", "eel"])
    same_results_as_a_folder("wds", tmp_path / "data", tiny_config, tiny_checkpoint, tmp_path)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
