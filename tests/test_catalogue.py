"""The dataset catalogue: every packaged entry loads, and its published counts and cross-references hold."""

import dataclasses
import re

import pytest

from clipzs import catalogue
from clipzs.errors import ClipzsError

# class and template counts as published (CLIP's data/prompts.md and ImageNet notebook)
COUNTS = {
    "cifar10": (10, 18),
    "cifar100": (100, 18),
    "stl10": (10, 2),
    "food101": (101, 1),
    "flowers102": (102, 1),
    "oxford_pets": (37, 1),
    "dtd": (47, 8),
    "eurosat": (10, 3),
    "gtsrb": (43, 3),
    "fgvc_aircraft": (100, 2),
    "stanford_cars": (196, 8),
    "sun397": (397, 2),
    "caltech101": (102, 34),
    "country211": (211, 5),
    "mnist": (10, 1),
    "fer2013": (7, 6),
    "pcam": (2, 1),
    "rendered_sst2": (2, 1),
    "imagenet1k": (1000, 80),
    "imagenetv2": (1000, 80),
    "imagenet_sketch": (1000, 80),
    "imagenet_r": (200, 80),
    "imagenet_a": (200, 80),
}
# CLIP's ImageNet names repeat two: 'missile' (projectile and missile) and 'sunglasses' (sunglass and sunglasses)
IMAGENET_REPEATS = {"missile", "sunglasses"}


def test_every_entry_loads_with_its_published_counts():
    assert set(COUNTS) <= set(catalogue.names())
    for name in catalogue.names():
        info = catalogue.get(name)
        assert info.name == name and (len(info.classes), len(info.templates)) == COUNTS[name], name
        assert all(isinstance(f, tuple) for f in (info.classes, info.templates, info.splits)), name
        assert all("{}" in t for t in info.templates) and info.default_split in info.splits, name
        assert info.raw_classes is None or len(set(info.raw_classes)) == len(info.raw_classes), name
        repeats = {c for c in info.classes if info.classes.count(c) > 1}
        assert repeats == (IMAGENET_REPEATS if info.wnids and not info.subset_of else set()), name
        assert re.search(r"@ [0-9a-f]{40}|clip-benchmark \d+\.\d+\.\d+", info.source), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalogue.get("mnist").name = "other"  # type: ignore[misc]


def test_readers_and_torchvision_classes_exist():
    import torchvision.datasets

    from clipzs.sources import READERS

    for name in catalogue.names():
        info = catalogue.get(name)
        assert info.reader in READERS, name
        if info.reader == "torchvision":
            assert hasattr(torchvision.datasets, info.torchvision.cls), name
            assert set(info.torchvision.kwargs) == set(info.splits) and info.folder, name


def test_cifar_entries_keep_their_meaning():
    cifar100 = catalogue.get("cifar100")
    assert (cifar100.reader, cifar100.folder, cifar100.default_root) == ("cifar", "cifar-100-python", "~/.cache")
    assert catalogue.class_names("cifar100", "raw")[1] == "aquarium_fish"
    assert catalogue.class_names("cifar100")[1] == "aquarium fish"
    assert catalogue.get("cifar10").folder == "cifar-10-batches-py"
    assert catalogue.class_names("cifar10", "raw") == catalogue.class_names("cifar10")


def test_imagenet_wnids_and_the_r_and_a_subsets():
    imagenet = catalogue.get("imagenet1k")
    assert len(set(imagenet.wnids)) == 1000 and list(imagenet.wnids) == sorted(imagenet.wnids)
    assert imagenet.classes[:2] == ("tench", "goldfish") and imagenet.wnids[0] == "n01440764"
    for name in ("imagenetv2", "imagenet_sketch"):
        assert catalogue.get(name).classes == imagenet.classes and catalogue.get(name).wnids == imagenet.wnids
    for name in ("imagenet_r", "imagenet_a"):
        info = catalogue.get(name)
        assert info.subset_of == "imagenet1k" and "200 ImageNet classes" in info.note
        assert list(info.subset_indices) == sorted(set(info.subset_indices))
        assert info.classes == tuple(imagenet.classes[i] for i in info.subset_indices)
        assert info.wnids == tuple(imagenet.wnids[i] for i in info.subset_indices)
    assert catalogue.get("imagenet_r").classes[0] == "goldfish" and catalogue.get("imagenet_a").wnids[0] == "n01498041"


def test_label_orders_follow_the_readers():
    assert catalogue.class_names("oxford_pets")[:3] == ["Abyssinian", "american bulldog", "american pit bull terrier"]
    assert catalogue.class_names("oxford_pets", "raw")[1] == "American Bulldog"
    sun, sun_raw = catalogue.class_names("sun397"), catalogue.class_names("sun397", "raw")
    jail = sun_raw.index("jail/indoor")
    assert (sun[jail], sun[jail + 1], sun_raw[jail + 1]) == ("jail indoor", "jail cell", "jail_cell")
    assert catalogue.class_names("eurosat")[2] == "brushland or shrubland"
    assert catalogue.class_names("caltech101", "raw")[:2] == ["BACKGROUND_Google", "Faces"]
    assert catalogue.class_names("fer2013") == ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]
    assert (catalogue.class_names("flowers102", "raw")[15], catalogue.class_names("flowers102")[15]) == (
        "globe-flower",
        "globe flower",
    )


def test_malformed_entries_are_refused_with_the_field_named():
    good = {
        "name": "x",
        "title": "X",
        "source": "s",
        "classes": ["a", "b"],
        "templates": ["a {}."],
        "splits": ["test"],
        "default_split": "test",
        "reader": "folder",
        "default_root": "~",
    }
    assert catalogue.parse(good, "x.json").raw_classes is None
    bad = {
        "every template needs a {}": {"templates": ["a photo"]},
        "default_split 'val' is not one of the splits": {"default_split": "val"},
        "2 classes but 1 raw_classes": {"raw_classes": ["a"]},
        r"unknown fields \['colour'\]": {"colour": "red"},
        "classes must be a list": {"classes": "ab"},
        "subset_of and subset_indices go together": {"subset_of": "imagenet1k"},
        "torchvision kwargs must give a dict for each split": {"torchvision": {"class": "MNIST", "kwargs": {}}},
    }
    for message, change in bad.items():
        with pytest.raises(ClipzsError, match=f"^x.json: .*{message}"):
            catalogue.parse({**good, **change}, "x.json")
    with pytest.raises(ClipzsError, match="unknown dataset 'imagenet'"):
        catalogue.get("imagenet")
    assert catalogue.find("folder") is None and catalogue.find(None) is None
