"""The dataset catalogue: one packaged JSON file per dataset, kept as data rather than code.

Each file holds CLIP's cleaned class names in label order (the order of the labels the dataset's reader yields:
torchvision's label indices, or ImageNet's sorted wnids), the source's raw names where they differ, CLIP's
templates for the dataset, its splits, and where its reader finds it on disk. `source` names where the names and
templates come from; `note` is what the results must say about how the set is scored. Files are checked when
loaded, so a malformed entry fails with its file and field named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from ..errors import ClipzsError

CLASSNAME_STYLES = ("raw", "clip")


@dataclass(frozen=True)
class TorchvisionSpec:
    """The torchvision dataset class a reader builds and its keyword arguments for each split."""

    cls: str  # a class of `torchvision.datasets`, e.g. "Food101"
    kwargs: Mapping[str, Mapping[str, Any]]  # split -> keyword arguments (read-only)


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset as the catalogue describes it."""

    name: str
    title: str
    source: str  # where the names and templates come from: repository + path + commit, or package + version
    classes: tuple[str, ...]  # CLIP's cleaned class names, in label order
    raw_classes: tuple[str, ...] | None  # the source's own names, where they differ from `classes`
    templates: tuple[str, ...]  # CLIP's templates for this dataset, each with `{}`
    splits: tuple[str, ...]
    default_split: str
    reader: str  # a key of `sources.READERS`
    folder: str | None  # what the reader expects under the data root
    default_root: str
    benchmark_name: str | None = None  # CLIP_benchmark's name for it (keys of its custom class-name/template JSON)
    note: str | None = None  # one line the results must carry (e.g. how a subset is scored)
    wnids: tuple[str, ...] | None = None  # ImageNet WordNet ids, in label order
    subset_of: str | None = None  # the dataset whose classes these are a subset of (ImageNet-R/-A: imagenet1k)
    subset_indices: tuple[int, ...] | None = None  # label i is class subset_indices[i] of `subset_of`
    torchvision: TorchvisionSpec | None = None

    def class_names(self, style: str = "clip") -> list[str]:
        """The class names in a style: `clip` (CLIP's), or `raw` (the source's own, where the catalogue has them)."""
        if style == "clip":
            return list(self.classes)
        if style == "raw":
            return list(self.raw_classes or self.classes)
        raise ClipzsError(f"unknown class-name style {style!r}: use one of {', '.join(CLASSNAME_STYLES)}")


_REQUIRED = {
    "name": str,
    "title": str,
    "source": str,
    "classes": list,
    "templates": list,
    "splits": list,
    "default_split": str,
    "reader": str,
    "default_root": str,
}
_OPTIONAL = {
    "raw_classes": list,
    "folder": str,
    "benchmark_name": str,
    "note": str,
    "wnids": list,
    "subset_of": str,
    "subset_indices": list,
    "torchvision": dict,
}


@cache
def _names() -> tuple[str, ...]:
    files = resources.files(__package__).iterdir()
    return tuple(sorted(p.name.removesuffix(".json") for p in files if p.name.endswith(".json")))


def names() -> list[str]:
    """Every catalogued dataset, sorted."""
    return list(_names())


def _strings(value: list, what: str, where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise ClipzsError(f"{where}: {what} must be non-empty strings")
    return tuple(value)


def _torchvision(spec: dict, splits: tuple[str, ...], where: str) -> TorchvisionSpec:
    kwargs = spec.get("kwargs")
    if set(spec) != {"class", "kwargs"} or not isinstance(spec["class"], str) or not isinstance(kwargs, dict):
        raise ClipzsError(f"{where}: torchvision must be {{'class': NAME, 'kwargs': {{split: {{...}}}}}}")
    if set(kwargs) != set(splits) or not all(isinstance(v, dict) for v in kwargs.values()):
        raise ClipzsError(f"{where}: torchvision kwargs must give a dict for each split ({', '.join(splits)})")
    return TorchvisionSpec(spec["class"], MappingProxyType({s: MappingProxyType(dict(k)) for s, k in kwargs.items()}))


def parse(data: object, where: str) -> DatasetInfo:
    """A catalogue entry from its JSON object, checked field by field; ClipzsError naming `where` if malformed."""
    if not isinstance(data, dict):
        raise ClipzsError(f"{where}: a catalogue entry must be a JSON object")
    data = {k: v for k, v in data.items() if v is not None}
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in data and not isinstance(data[key], kind):
            raise ClipzsError(f"{where}: {key} must be a {kind.__name__}")
    missing, unknown = set(_REQUIRED) - set(data), set(data) - set(_REQUIRED) - set(_OPTIONAL)
    if missing or unknown:
        raise ClipzsError(f"{where}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    classes = _strings(data["classes"], "classes", where)
    raw = _strings(data["raw_classes"], "raw_classes", where) if "raw_classes" in data else None
    templates = _strings(data["templates"], "templates", where)
    splits = _strings(data["splits"], "splits", where)
    wnids = _strings(data["wnids"], "wnids", where) if "wnids" in data else None
    indices = data.get("subset_indices")
    problems = [
        (not classes, "no classes"),
        (raw is not None and len(raw) != len(classes), f"{len(classes)} classes but {len(raw or ())} raw_classes"),
        (wnids is not None and len(wnids) != len(classes), f"{len(classes)} classes but {len(wnids or ())} wnids"),
        (not templates or not all("{}" in t for t in templates), "every template needs a {} for the class name"),
        (data["default_split"] not in splits, f"default_split {data['default_split']!r} is not one of the splits"),
        (("subset_of" in data) != (indices is not None), "subset_of and subset_indices go together"),
        (
            indices is not None and (len(indices) != len(classes) or any(type(i) is not int or i < 0 for i in indices)),
            "subset_indices must be one class index per class",
        ),
    ]
    for bad, problem in problems:
        if bad:
            raise ClipzsError(f"{where}: {problem}")
    return DatasetInfo(
        name=data["name"],
        title=data["title"],
        source=data["source"],
        classes=classes,
        raw_classes=raw,
        templates=templates,
        splits=splits,
        default_split=data["default_split"],
        reader=data["reader"],
        folder=data.get("folder"),
        default_root=data["default_root"],
        benchmark_name=data.get("benchmark_name"),
        note=data.get("note"),
        wnids=wnids,
        subset_of=data.get("subset_of"),
        subset_indices=tuple(indices) if indices is not None else None,
        torchvision=_torchvision(data["torchvision"], splits, where) if "torchvision" in data else None,
    )


@cache
def get(name: str) -> DatasetInfo:
    """The catalogue entry of `name`; ClipzsError naming the known datasets if there is none."""
    if name not in _names():
        raise ClipzsError(f"unknown dataset {name!r}: use one of {', '.join(names())}, or a format (folder, ...)")
    where = f"catalogue/{name}.json"
    try:
        data = json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipzsError(f"cannot read {where}: {e}") from e
    info = parse(data, where)
    if info.name != name:
        raise ClipzsError(f"{where}: its name is {info.name!r}")
    return info


def find(name: str | None) -> DatasetInfo | None:
    """The catalogue entry of `name`, or None for a dataset that is not catalogued (a folder, a CSV, ...)."""
    return get(name) if name and name in _names() else None


def class_names(name: str, style: str = "clip") -> list[str]:
    """A catalogued dataset's class names in `style` (`clip` or `raw`), in label order, without reading its data."""
    return get(name).class_names(style)
