"""What to evaluate and how: the options that `evaluate`, `select`, `compare` and `encode` share.

A module of its own, free of heavy imports, because the CLI maps its flags onto these fields mechanically
(each flag's argparse `dest` is a field name) and must stay quick to start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import ClipzsError

ENGINES = ("local", "ray")


def cached_model_name(model: str | None) -> str | None:
    """A `model` as the feature cache names it: a .json config file by its absolute path, so that any spelling of
    the path (relative, absolute, through `..`) finds the same entries (the file's contents are keyed by their
    SHA256 besides); any other name as it is."""
    if model and model.endswith(".json") and Path(model).is_file():
        return str(Path(model).resolve())
    return model


@dataclass(frozen=True)
class Setup:
    """Data, model, prompts and how to encode them. Every field is a parameter of the library's commands."""

    dataset: str = "cifar100"
    data_root: str | None = None
    split: str | None = None  # None: the dataset's default split
    model: str | None = None  # None: ViT-B/32, or what a transformers checkpoint given as `pretrained` says
    pretrained: str | None = None
    cache_dir: str | None = None
    templates: str = "dataset"
    classnames: str = "clip"
    batch_size: int | None = None
    device: str | None = None
    precision: str | None = None
    workers: int | None = None
    limit: int | None = None
    strict: bool = False
    feature_cache: str | None = None
    use_cache: bool = True
    progress: bool = True
    compile: bool = False
    engine: str = "local"
    ray_address: str | None = None
    ray_collect: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ClipzsError(f"{name} must be at least 1, got {value}", parameter=name)
        if self.workers is not None and self.workers < 0:
            raise ClipzsError(f"workers must be 0 or more, got {self.workers}", parameter="workers")
        if self.engine not in ENGINES:
            raise ClipzsError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}", parameter="engine")

    def record(self) -> dict:
        """Every option as used, by name, for the results file (paths as given, as strings)."""
        return {
            k: (str(v) if v is not None and not isinstance(v, bool | int | float | str) else v)
            for k, v in asdict(self).items()
        }


SETUP_FIELDS = tuple(f.name for f in fields(Setup))


def split_options(options: dict) -> tuple[Setup, dict]:
    """A `Setup` from the options that are its fields, and the rest; a one-line error for unknown names."""
    setup = {k: v for k, v in options.items() if k in SETUP_FIELDS}
    return Setup(**setup), {k: v for k, v in options.items() if k not in SETUP_FIELDS}
