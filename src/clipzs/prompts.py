"""Prompt templates: built-in sets (text files shipped with the package) and user template files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ClipzsError

BUILTIN_TEMPLATES = ("seed", "cifar", "imagenet80")
PLACEHOLDER = "{}"


def _parse(text: str, source: str) -> list[str]:
    templates = [line.strip() for line in text.splitlines() if line.strip()]
    if not templates:
        raise ClipzsError(f"no templates in {source}")
    for n, template in enumerate(templates, 1):
        if PLACEHOLDER not in template:
            raise ClipzsError(f"template {n} in {source} has no {PLACEHOLDER} for the class name: {template!r}")
    return templates


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
