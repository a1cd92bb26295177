"""Prompts: built-in template sets (text files shipped with the package), template files, and class-specific
sentences (a JSON object mapping each class name to its own list, the CuPL format CLIP_benchmark also reads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ClipzsError

BUILTIN_TEMPLATES = ("seed", "cifar", "imagenet80")
PLACEHOLDER = "{}"


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


def load_templates(spec: str) -> list[str]:
    """Templates of a built-in set (`seed`, `cifar`, `imagenet80`) or of a file, one per line with `{}`."""
    if spec in BUILTIN_TEMPLATES:
        return _parse(resources.files(__package__).joinpath(f"templates/{spec}.txt").read_text(), spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ClipzsError(f"templates {spec!r} is neither a built-in set ({', '.join(BUILTIN_TEMPLATES)}) nor a file")
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
    """Prompts [T][C]: T slots by C classes, and a name for each slot (its template, or `class-specific k`)."""

    names: list[str]
    prompts: list[list[str]]


def _read_class_prompts(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipzsError(f"cannot read class-specific prompts {path}: {e}") from e
    valid = (
        isinstance(data, dict)
        and data
        and all(isinstance(v, list) and v and all(isinstance(p, str) and p.strip() for p in v) for v in data.values())
    )
    if not valid:
        raise ClipzsError(f"{path} must map each class name to a non-empty list of sentences (CuPL format)")
    return data


def read_prompts(spec: str) -> list[str] | dict[str, list[str]]:
    """Templates (built-in set or text file) or, for a `.json` file, class-specific sentences."""
    if spec.endswith(".json"):
        return _read_class_prompts(Path(spec).expanduser())
    return load_templates(spec)


def prompt_set(source: list[str] | dict[str, list[str]], classnames: list[str]) -> PromptSet:
    """The [T][C] prompts of templates or of class-specific sentences for these class names.

    Class-specific lists are aligned by position: slot k holds each class's k-th sentence, and a class
    with fewer sentences than the longest list starts its own again, so every slot has one per class.
    A class is looked up by its name, then with underscores and spaces swapped.
    """
    if isinstance(source, list):
        return PromptSet(names=list(source), prompts=build_prompts(source, classnames))
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
    )
