"""Prompts: template sets, class names, and class-specific sentences.

Templates come from a built-in set (text files shipped with the package), a catalogued dataset's CLIP templates
(`dataset`: the evaluated dataset's own; or a dataset's name), a text file with one template per line, or a JSON
file: class-specific sentences mapping each class to its own list (the CuPL format), or CLIP_benchmark's
`--custom_template_file` keyed by dataset name. Class names are the source's (`raw`), CLIP's (`clip`), or
CLIP_benchmark's `--custom_classname_file` JSON keyed by dataset name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import catalogue
from .errors import ClipzsError

BUILTIN_TEMPLATES = ("seed", "cifar", "imagenet80")
DATASET_TEMPLATES = "dataset"  # the evaluated dataset's own templates
FALLBACK_TEMPLATES = "imagenet80"  # what `dataset` means for a dataset the catalogue does not know
CLASSNAME_STYLES = ("raw", "clip")  # or a CLIP_benchmark class-name JSON file
PLACEHOLDER = "{}"
BENCHMARK_PLACEHOLDER = "{c}"  # CLIP_benchmark's templates are filled by `template.format(c=name)`
CONTEXT_LENGTH = 77  # CLIP's text context, start and end tokens included


def check_templates(templates: list[str], source: str) -> list[str]:
    """`templates` if there is at least one and each has a `{}` for the class name; else a ClipzsError."""
    if not templates:
        raise ClipzsError(f"no templates in {source}")
    for n, template in enumerate(templates, 1):
        if PLACEHOLDER not in template:
            raise ClipzsError(f"template {n} in {source} has no {PLACEHOLDER} for the class name: {template!r}")
    return templates


def _parse(text: str, source: str) -> list[str]:
    return check_templates([line.strip() for line in text.splitlines() if line.strip()], source)


@dataclass(frozen=True)
class DatasetTemplates:
    """The templates `dataset` resolves to, and a note when they are not the dataset's own."""

    templates: list[str]
    note: str | None = None


def dataset_templates(dataset: str | None, own: Sequence[str] | None = None) -> DatasetTemplates:
    """A dataset's own templates: those its source carries (`own`, e.g. a webdataset's
    zeroshot_classification_templates.txt, preferred as CLIP_benchmark does), else the catalogue's CLIP
    templates, else, for a set the catalogue does not know (a folder, a CSV), CLIP's 80 generic ImageNet templates.
    """
    if own:
        return DatasetTemplates(check_templates([t.strip() for t in own if t.strip()], f"{dataset}'s own templates"))
    info = catalogue.find(dataset)
    if info is not None:
        return DatasetTemplates(list(info.templates))
    note = f"{dataset or 'this dataset'} is not in the catalogue: CLIP's 80 generic ImageNet templates are used"
    return DatasetTemplates(load_templates(FALLBACK_TEMPLATES), note)


def load_templates(spec: str, dataset: str | None = None, own: Sequence[str] | None = None) -> list[str]:
    """Templates of `dataset` (the evaluated dataset's: see `dataset_templates`), of a built-in set (`seed`,
    `cifar`, `imagenet80`), of a catalogued dataset named by `spec`, or of a file, one per line with `{}`."""
    if spec == DATASET_TEMPLATES:
        return dataset_templates(dataset, own).templates
    if spec in BUILTIN_TEMPLATES:
        return _parse(resources.files(__package__).joinpath(f"templates/{spec}.txt").read_text(), spec)
    info = catalogue.find(spec)
    if info is not None:
        return list(info.templates)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ClipzsError(
            f"templates {spec!r} is neither a built-in set ({', '.join(BUILTIN_TEMPLATES)}), {DATASET_TEMPLATES!r}, "
            "a catalogued dataset nor a file"
        )
    if path.suffix.lower() == ".json":  # class-specific sentences: `read_prompts` reads them, for eval and select
        raise ClipzsError(
            f"templates {spec}: a .json of class-specific sentences is for eval, select and compare; "
            "here give templates with {} (a set name or a text file, one per line)",
            parameter="templates",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ClipzsError(f"cannot read template file {path}: {e}") from e
    return _parse(text, str(path))


def fill(template: str, classname: str) -> str:
    """The prompt for one class: every `{}` replaced by the class name (no `str.format` brace rules)."""
    return template.replace(PLACEHOLDER, classname)


def build_prompts(templates: list[str], classnames: list[str]) -> list[list[str]]:
    """Prompts [T][C]: one sentence per template and class."""
    return [[fill(t, c) for c in classnames] for t in templates]


@dataclass(frozen=True)
class PromptSet:
    """Prompts [T][C]: T slots by C classes, a name for each slot (its template, or `class-specific k`), and a
    note for the results when the templates are a fallback."""

    names: list[str]
    prompts: list[list[str]]
    note: str | None = None


def benchmark_keys(dataset: str | None) -> list[str]:
    """The keys a CLIP_benchmark custom JSON file may hold `dataset` under, most specific first: the catalogue's
    `benchmark_name` (`pets` for oxford_pets) and clipzs's name; for a prefixed name (`wds/vtab/cifar10`) the
    name and the name without its prefix, as CLIP_benchmark looks them up."""
    if not dataset:
        return []
    info = catalogue.find(dataset)
    if info is not None:
        keys = [info.benchmark_name, info.name]
    elif "/" in dataset:
        keys = [dataset, dataset.split("/", 1)[1]]
    else:
        keys = [dataset]
    return list(dict.fromkeys(k for k in keys if k))


def _read_json(path: Path, what: str, shape: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipzsError(f"cannot read {what} {path}: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict) or not data:
        raise ClipzsError(f"{path} must be a non-empty JSON object: {shape}")
    return data


def _entry(data: dict, dataset: str | None, path: Path) -> tuple[str, object]:
    """The value of `data` for `dataset` (see `benchmark_keys`) and its key; ClipzsError if there is none."""
    keys = benchmark_keys(dataset)
    key = next((k for k in keys if k in data), None)
    if key is None:
        looked = f" (looked for {', '.join(keys)})" if keys else ""
        raise ClipzsError(f"{path} has no entry for dataset {dataset}{looked}; it has {', '.join(list(data)[:8])}")
    return key, data[key]


def _is_sentences(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(p, str) and p.strip() for p in value)


def _class_prompts(data: object, where: str) -> dict[str, list[str]]:
    if not (isinstance(data, dict) and data and all(_is_sentences(v) for v in data.values())):
        raise ClipzsError(f"{where} must map each class name to a non-empty list of sentences (CuPL format)")
    return data


def _keyed_by_dataset(data: dict) -> bool:
    """Whether a JSON prompt file is CLIP_benchmark's (dataset -> templates or CuPL dict) rather than a CuPL file
    (class -> sentences): some value is a dict, or every string has a placeholder (sentences have none)."""
    values = list(data.values())
    if any(isinstance(v, dict) for v in values):
        return True
    strings = [s for v in values if isinstance(v, list) for s in v if isinstance(s, str)]
    return bool(strings) and all(PLACEHOLDER in s or BENCHMARK_PLACEHOLDER in s for s in strings)


def _read_json_prompts(path: Path, dataset: str | None) -> list[str] | dict[str, list[str]]:
    data = _read_json(path, "prompt file", "class -> sentences (CuPL format) or dataset -> templates")
    if not _keyed_by_dataset(data):
        return _class_prompts(data, str(path))
    key, value = _entry(data, dataset, path)
    where = f"{path} [{key}]"
    if isinstance(value, dict):
        return _class_prompts(value, where)
    if not _is_sentences(value):
        raise ClipzsError(f"{where} must be a list of templates or a class -> sentences object")
    return check_templates([t.strip().replace(BENCHMARK_PLACEHOLDER, PLACEHOLDER) for t in value], where)


def read_prompts(
    spec: str, dataset: str | None = None, own: Sequence[str] | None = None
) -> list[str] | dict[str, list[str]]:
    """Templates (see `load_templates`) or, for a `.json` file, class-specific sentences or CLIP_benchmark's
    custom templates, taking the entry of `dataset` from a file keyed by dataset name."""
    if spec.endswith(".json"):
        return _read_json_prompts(Path(spec).expanduser(), dataset)
    return load_templates(spec, dataset, own)


def prompt_set(source: list[str] | dict[str, list[str]], classnames: list[str], note: str | None = None) -> PromptSet:
    """The [T][C] prompts of templates or of class-specific sentences for these class names.

    Class-specific lists are aligned by position: slot k holds each class's k-th sentence, and a class
    with fewer sentences than the longest list starts its own again, so every slot has one per class.
    A class is looked up by its name, then with underscores and spaces swapped.
    """
    if isinstance(source, list):
        return PromptSet(names=list(source), prompts=build_prompts(source, classnames), note=note)
    sentences, missing = [], []
    for name in classnames:
        found = next((source[k] for k in (name, name.replace("_", " "), name.replace(" ", "_")) if k in source), None)
        if found is None:
            missing.append(name)
        sentences.append(found)
    if missing:
        raise ClipzsError(f"class-specific prompts lack {len(missing)} classes: {', '.join(missing[:5])}")
    slots = max(len(s) for s in sentences)
    return PromptSet(
        names=[f"class-specific {k + 1}" for k in range(slots)],
        prompts=[[s[k % len(s)] for s in sentences] for k in range(slots)],
        note=note,
    )


def dataset_prompts(
    spec: str, dataset: str | None, classnames: list[str], own: Sequence[str] | None = None
) -> PromptSet:
    """The prompts `spec` gives for `dataset`'s class names, noting when `dataset` fell back to generic templates."""
    note = dataset_templates(dataset, own).note if spec == DATASET_TEMPLATES else None
    return prompt_set(read_prompts(spec, dataset, own), classnames, note)


def class_names(dataset: str | None, raw: Sequence[str], style: str = "clip") -> list[str]:
    """The class names to put in prompts, in label order, from the source's raw names and a style.

    `raw`: as the source stores them. `clip`: the catalogue's CLIP names when `dataset` is catalogued (their
    count must match the source's), else the raw names with underscores as spaces. A `.json` path: the
    dataset's entry of a CLIP_benchmark `--custom_classname_file` (dataset name -> list of names).
    """
    if style == "raw":
        return list(raw)
    if style == "clip":
        info = catalogue.find(dataset)
        if info is None:
            return [c.replace("_", " ") for c in raw]
        if len(info.classes) != len(raw):
            raise ClipzsError(
                f"the catalogue has {len(info.classes)} CLIP class names for {dataset} but the source has {len(raw)} "
                "classes: use --classnames raw"
            )
        return list(info.classes)
    if style.endswith(".json"):
        path = Path(style).expanduser()
        key, names = _entry(_read_json(path, "class-name file", "dataset -> class names"), dataset, path)
        if not _is_sentences(names):
            raise ClipzsError(f"{path} [{key}] must be a list of class names")
        if len(names) != len(raw):
            raise ClipzsError(f"{path} [{key}] has {len(names)} class names but the source has {len(raw)} classes")
        return [n.strip() for n in names]
    raise ClipzsError(f"unknown class-name style {style!r}: use {', '.join(CLASSNAME_STYLES)} or a .json file")


def overlong_prompts(
    prompts: Iterable[str], token_length: Callable[[str], int], context_length: int = CONTEXT_LENGTH
) -> list[tuple[str, int]]:
    """The prompts longer than the text encoder's context, each once (first-seen order) with its token count.

    `token_length(prompt)` counts the start and end tokens too (for open_clip's tokenizer:
    `len(tokenizer.encode(p)) + 2`). Such prompts are cut to `context_length` when encoded, so two of them that
    differ only past the cut get identical features.
    """
    seen: dict[str, int] = {}
    for prompt in prompts:
        if prompt not in seen:
            seen[prompt] = token_length(prompt)
    return [(p, n) for p, n in seen.items() if n > context_length]
