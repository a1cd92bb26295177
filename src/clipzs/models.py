"""Model names, checkpoint download and verification, checkpoint loading, precision and device.

OpenAI's nine CLIP models are data (`openai_models.json`: name, open_clip QuickGELU config, URL whose
second-to-last path segment is the file's SHA256, as in the official `clip` package). Their weights
live where `clip.load` keeps them (`~/.cache/clip`), so an existing download is reused. Transformers
CLIP checkpoints (a folder or a Hugging Face Hub id) are mapped by `hf`; open_clip names, `hf-hub:` names
and pretrained tags are open_clip's, with their files taken from the Hugging Face cache when present.

`describe_model` says what a model is (a `ModelSpec`: enough for cache keys) without building it or
reading its weights; `load_model` builds it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from ._version import __version__
from .checkpoints import checked_weights, load_weights, read_state_dict
from .download import fetch, first_line, hub_files, sha256
from .errors import ClipzsError, ClipzsWarning
from .storage import write_atomic

if TYPE_CHECKING:
    from open_clip.transform import PreprocessCfg

OPENAI_MODELS: dict[str, dict[str, str]] = json.loads(
    resources.files(__package__).joinpath("openai_models.json").read_text()
)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RANDOM = "random"
DEFAULT_MODEL = "ViT-B/32"  # when no model is named and the weights do not say
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors"})
TOWERS = frozenset({"image", "text"})
HF_HUB_PREFIX = "hf-hub:"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip.constants' names
DIGESTS = "sha256.json"  # remembered checkpoint digests, in the checkpoint cache folder
SPECS = "specs.json"  # remembered model descriptions, beside them


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, known without building it or reading its weights: names its outputs in a cache."""

    name: str
    config: str  # open_clip config name (`hf-<hash>` for a transformers config no open_clip config equals)
    pretrained: str
    checkpoint: str  # "sha256:<hex>" of the weights file, or "open_clip:<tag>", or "random"
    precision: str
    device: torch.device
    preprocess: str  # the image preprocessing, as `preprocess.split_preprocess(...).description`
    source: str  # how it is built: "random", "file" (OpenAI or state dict), "transformers", "open_clip", "hf-hub"
    weights: Path | None = None
    config_file: Path | None = None  # transformers' config.json or open_clip's open_clip_config.json


@dataclass(frozen=True)
class ClipModel:
    """A loaded CLIP model with what is needed to use it and to name its outputs in a cache."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    config: str
    pretrained: str
    checkpoint: str  # "sha256:<hex>" of the weights file, or "open_clip:<tag>", or "random"
    precision: str
    device: torch.device
    logit_scale: float  # read before any cast: bf16 would round 100 to 98.9
    spec: ModelSpec

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]


def default_cache_dir() -> Path:
    """Where OpenAI checkpoints live: `CLIPZS_CACHE`, else the official `clip` package's folder."""
    return Path(os.environ.get("CLIPZS_CACHE") or Path.home() / ".cache" / "clip").expanduser()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_precision(device: str | torch.device) -> str:
    """fp16 on CUDA (as the official package does), fp32 elsewhere."""
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def parse_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch device that exists here (cpu, cuda, cuda:N); the default is cuda when available."""
    if device is None:
        return torch.device(default_device())
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ClipzsError(f"device {str(device)!r} is not valid: use cpu, cuda or cuda:N", parameter="device")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ClipzsError(f"device {str(device)!r} was asked for but CUDA is not available", parameter="device")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ClipzsError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    return parsed


def parse_precision(precision: str | None, device: torch.device) -> str:
    """`precision` checked (the default follows the device); fp16 on a CPU works but is said to be slow."""
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise ClipzsError(f"precision {precision!r} is not valid: use {', '.join(PRECISIONS)}", parameter="precision")
    if precision == "fp16" and device.type == "cpu":
        warnings.warn(
            "precision fp16 on a CPU is about 4x slower than fp32 (CPUs lack fast fp16 matrix multiplies); "
            "fp32 or bf16 is faster",
            ClipzsWarning,
            stacklevel=3,
        )
    return precision


def openai_name(name: str) -> str | None:
    """The OpenAI model name for `name`, which may be OpenAI's (`ViT-B/32`) or open_clip's (`ViT-B-32`)."""
    if name in OPENAI_MODELS:
        return name
    for openai, entry in OPENAI_MODELS.items():
        if name in (entry["config"], entry["config"].removesuffix("-quickgelu")):
            return openai
    return None


def _check_model_config(path: Path) -> None:
    """Refuse a model config file open_clip would skip without a word: it must be a JSON object with `embed_dim`,
    `vision_cfg` and `text_cfg`, the last two objects themselves."""
    if not path.is_file():
        raise ClipzsError(f"model {path}: no such config file", parameter="model")
    try:
        cfg = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ClipzsError(f"model {path}: not a JSON config ({first_line(e)})", parameter="model") from e
    kinds = {"embed_dim": int, "vision_cfg": dict, "text_cfg": dict}
    wrong = [k for k, kind in kinds.items() if not isinstance(cfg, dict) or not isinstance(cfg.get(k), kind)]
    if wrong:
        raise ClipzsError(
            f"model {path} is not an open_clip model config: it lacks {' and '.join(wrong)} "
            "(it needs embed_dim, an integer, and the objects vision_cfg and text_cfg)",
            parameter="model",
        )


def resolve(name: str, pretrained: str | None) -> tuple[str, str]:
    """The open_clip config name and pretrained source for a model name and optional pretrained value.

    OpenAI names always use the QuickGELU config their weights were trained with; an open_clip name
    with `pretrained="openai"` is treated as the OpenAI model. A `.json` path is an open_clip model
    config (used for custom and test models).
    """
    import open_clip

    if name.endswith(".json"):
        _check_model_config(Path(name))
        open_clip.add_model_config(name)
        return Path(name).stem, pretrained or RANDOM
    openai = openai_name(name)
    if openai and (name in OPENAI_MODELS or pretrained in (None, "openai")):
        return OPENAI_MODELS[openai]["config"], pretrained or "openai"
    if name in open_clip.list_models():
        if pretrained is None:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ClipzsError(
                f"model {name} needs pretrained: one of {', '.join(tags) or 'none known'}, a checkpoint file, "
                f"a transformers CLIP folder or Hugging Face id, or '{RANDOM}'"
            )
        return name, pretrained
    raise ClipzsError(
        f"unknown model {name!r}: use an OpenAI name ({', '.join(OPENAI_MODELS)}), an open_clip name "
        "(see `open_clip.list_models()`), an open_clip `hf-hub:org/name`, or a model config .json file"
    )


def available_models(cache_dir: str | Path | None = None) -> list[dict]:
    """Every model clipzs can name: OpenAI's (with whether its checkpoint is in the cache folder) and
    open_clip's pretrained (name, tag) pairs (with whether the Hugging Face cache holds their weights)."""
    import open_clip

    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    rows = [
        {
            "model": name,
            "pretrained": "openai",
            "source": "openai",
            "cached": (folder / os.path.basename(entry["url"])).is_file(),
        }
        for name, entry in OPENAI_MODELS.items()
    ]
    try:
        from huggingface_hub import scan_cache_dir

        hub = {repo.repo_id for repo in scan_cache_dir().repos}
    except Exception:  # no hub cache folder yet, or an unreadable one: nothing is cached there
        hub = set()
    for name, tag in open_clip.list_pretrained():
        if tag == "openai":
            continue
        repo = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").strip("/")
        rows.append({"model": name, "pretrained": tag, "source": "open_clip", "cached": bool(repo) and repo in hub})
    return rows


def openai_sha256(name: str) -> str:
    """The SHA256 OpenAI publishes for a checkpoint: the second-to-last segment of its URL."""
    return OPENAI_MODELS[name]["url"].split("/")[-2]


def openai_checkpoint(name: str, cache_dir: Path | None = None) -> Path:
    """Path of OpenAI's checkpoint for `name`, verified against the SHA256 in its URL; downloads if needed.

    The verified digest is remembered (see `download.sha256`), so an unchanged file is hashed only once.
    """
    folder = cache_dir or default_cache_dir()
    url = OPENAI_MODELS[name]["url"]
    expected = openai_sha256(name)
    path = folder / os.path.basename(url)
    if path.is_file() and sha256(path, folder / DIGESTS) == expected:
        return path
    what = f"checkpoint for {name}" + (" (present but with the wrong SHA256)" if path.exists() else "")
    fetch(url, path, "sha256", expected, what)
    sha256(path, folder / DIGESTS, known=expected)
    return path


def _looks_like_file(pretrained: str) -> bool:
    return Path(pretrained).suffix in CHECKPOINT_SUFFIXES or "/" in pretrained or Path(pretrained).exists()


def _tag_file(config: str, tag: str, cache_dir: Path) -> Path:
    """The weights file of an open_clip pretrained tag, from the Hugging Face cache when it is there."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(config, tag)
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else Path(filename).with_suffix(".safetensors").name
        return hub_files(repo, [tuple(dict.fromkeys((safe, filename)))])[0]
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=str(cache_dir)))
    except Exception as e:  # open_clip raises many types for a failed download
        raise ClipzsError(f"cannot download pretrained {tag} of {config}: {first_line(e)}") from e


class _Located(NamedTuple):
    name: str
    config: str
    pretrained: str
    source: str
    weights: Path | None
    config_file: Path | None
    checkpoint: str | None  # None: the SHA256 of `weights`


def _locate(name: str | None, pretrained: str | None, cache_dir: Path) -> _Located:
    """What `name` and `pretrained` designate, with the weights file found (or downloaded)."""
    import open_clip
    from open_clip.constants import HF_CONFIG_NAME

    from . import hf

    if name and name.startswith(HF_HUB_PREFIX):
        if pretrained is not None:
            raise ClipzsError(f"pretrained must be unset for model {name}: hf-hub models bring their weights")
        config_file, weights = hub_files(name.removeprefix(HF_HUB_PREFIX), [(HF_CONFIG_NAME,), OPEN_CLIP_WEIGHTS])
        return _Located(name, name, name, "hf-hub", weights, config_file, None)
    files = None if pretrained in (None, RANDOM, "openai") else hf.locate(pretrained)
    if files:
        cfg = hf.open_clip_config(files[0])
        if name is None:
            name = config = hf.config_name(cfg)
        else:
            config, _ = resolve(name, pretrained)
            if hf.canonical(open_clip.get_model_config(config)) != hf.canonical(cfg):
                raise ClipzsError(
                    f"model {name} ({config}) does not match pretrained {pretrained}, whose {hf.CONFIG} describes "
                    f"{hf.config_name(cfg)}: leave model unset or name that one"
                )
        return _Located(name, config, pretrained, "transformers", files[1], files[0], None)
    name = name or DEFAULT_MODEL
    config, pretrained = resolve(name, pretrained)
    openai = openai_name(name)
    if pretrained == RANDOM:
        return _Located(name, config, pretrained, RANDOM, None, None, RANDOM)
    if pretrained == "openai" and openai:
        path = openai_checkpoint(openai, cache_dir)
        return _Located(name, config, pretrained, "file", path, None, f"sha256:{openai_sha256(openai)}")
    if _looks_like_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ClipzsError(f"checkpoint file not found: {path}")
        return _Located(name, config, pretrained, "file", path, None, None)
    tags = open_clip.list_pretrained_tags_by_model(config)
    if pretrained not in tags:
        raise ClipzsError(
            f"unknown pretrained tag {pretrained!r} for {config}: use one of "
            f"{', '.join(tags) or 'none known'}, a checkpoint file, or '{RANDOM}'"
        )
    return _Located(
        name, config, pretrained, "open_clip", _tag_file(config, pretrained, cache_dir), None, f"open_clip:{pretrained}"
    )


def _architecture(found: _Located | ModelSpec) -> tuple[dict, PreprocessCfg]:
    """The open_clip model config and the preprocessing config of a model, as open_clip's factory derives them."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    from . import hf

    extra: dict = {}
    if found.source == "transformers":
        cfg = hf.open_clip_config(found.config_file)
    elif found.source == "hf-hub":
        try:
            loaded = json.loads(found.config_file.read_text())
            cfg, extra = loaded["model_cfg"], loaded.get("preprocess_cfg", {})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ClipzsError(f"cannot read the open_clip config {found.config_file}: {first_line(e)}") from e
    else:
        if found.name and found.name.endswith(".json") and open_clip.get_model_config(found.config) is None:
            open_clip.add_model_config(found.name)  # a config file named as the model: registered by `resolve`
        cfg = open_clip.get_model_config(found.config)
        extra = open_clip.get_pretrained_cfg(found.config, found.pretrained) if found.source == "open_clip" else {}
    preprocess = merge_preprocess_dict(PreprocessCfg(), extra)
    preprocess["size"] = cfg["vision_cfg"].get("image_size", preprocess["size"])  # as create_model sets it
    return cfg, PreprocessCfg(**preprocess)


def describe_model(
    name: str | None = "ViT-B/32",
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    cache_dir: str | Path | None = None,
) -> ModelSpec:
    """What `load_model` with these arguments would load, without building the model or reading its weights.

    Resolves (downloading if needed) the weights file and raises the same errors for a missing or unknown
    one. A local file's SHA256 is remembered by (path, size, mtime), so later calls cost a stat; the whole
    description is remembered too (`SPECS`, beside the digests) while its files are unchanged, so a run whose
    features are all cached imports neither open_clip nor torchvision.
    """
    device = parse_device(device)
    precision = parse_precision(precision, device)
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if folder.exists() and not folder.is_dir():
        named = "cache_dir" if cache_dir else "the checkpoint folder ($CLIPZS_CACHE or ~/.cache/clip)"
        raise ClipzsError(f"{named} {folder} is a file, not a folder", "cache_dir" if cache_dir else None)
    key = json.dumps([__version__, name, pretrained, str(device), precision, str(folder.resolve())])
    remembered = _remembered_spec(folder / SPECS, key)
    if remembered is not None:
        return remembered
    spec = _describe(name, pretrained, device, precision, folder)
    _remember_spec(folder / SPECS, key, spec)
    return spec


def _describe(name: str | None, pretrained: str | None, device: torch.device, precision: str, folder: Path):
    from open_clip.transform import image_transform_v2

    from .preprocess import split_preprocess

    found = _locate(name, pretrained, folder)
    preprocess = image_transform_v2(_architecture(found)[1], is_train=False)
    return ModelSpec(
        **found._asdict() | {"checkpoint": found.checkpoint or f"sha256:{sha256(found.weights, folder / DIGESTS)}"},
        precision=precision,
        device=device,
        preprocess=split_preprocess(preprocess).description,
    )


def _stat(path: Path | None) -> list | None:
    try:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]
    except (AttributeError, OSError):
        return None


_SPEC_TEXT = ("name", "config", "pretrained", "checkpoint", "precision", "preprocess", "source")


def _stats(name: str, weights: Path | None, config_file: Path | None) -> list:
    """Size and mtime of every file a description depends on: weights, config, and a model config .json."""
    model_file = Path(name) if name and name.endswith(".json") else None
    return [_stat(weights), _stat(config_file), _stat(model_file)]


def _remembered_spec(table: Path, key: str) -> ModelSpec | None:
    """The description stored under `key` if every file it names is as it was then."""
    try:
        entry = json.loads(table.read_text())[key]
        paths = {k: Path(entry[k]) if entry[k] else None for k in ("weights", "config_file")}
        if entry["stats"] != _stats(entry["name"], paths["weights"], paths["config_file"]):
            return None
        return ModelSpec(**{k: entry[k] for k in _SPEC_TEXT}, device=torch.device(entry["device"]), **paths)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_spec(table: Path, key: str, spec: ModelSpec) -> None:
    """Store the description (atomically; when the folder cannot be written, it is described again next time)."""
    try:
        entries = json.loads(table.read_text())
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    entry = {k: str(v) if isinstance(v, Path | torch.device) else v for k, v in spec.__dict__.items()}
    entry["stats"] = _stats(spec.name, spec.weights, spec.config_file)
    entries[key] = entry
    try:
        table.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(table, json.dumps(entries, indent=1).encode())
    except OSError:
        pass


class NotLoaded(torch.nn.Module):
    """Stands in for the image tower when `load_model(towers={"text"})` left it out: using it is an error."""

    def forward(self, *args: object) -> torch.Tensor:
        raise ClipzsError("the image tower was not loaded (load_model was given towers={'text'})")


@contextmanager
def _quiet_logging():
    """open_clip logs "initialized randomly" before clipzs loads the weights; that is not news to the user."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _is_plain_clip(cfg: dict) -> bool:
    """open_clip's own `CLIP` class (OpenAI's and most ViT/ResNet configs), not a timm, HF-text or CoCa model."""
    return not (
        cfg.get("custom_text")
        or "multimodal_cfg" in cfg
        or "timm_model_name" in cfg.get("vision_cfg", {})
        or "hf_model_name" in cfg.get("text_cfg", {})
    )


def _state(spec: ModelSpec, cfg: dict) -> dict[str, torch.Tensor]:
    from . import hf

    state = read_state_dict(spec.weights)
    return hf.to_open_clip(state, cfg, str(spec.weights)) if spec.source == "transformers" else state


def _build(spec: ModelSpec, cfg: dict, towers: frozenset[str]) -> torch.nn.Module:
    """The model of `spec` with its weights.

    A plain CLIP with a weights file is built on the meta device and the weights are assigned to it, so no
    random initialisation runs; with `towers={"text"}` the image tower is then left out. Random weights
    (seeded, the caller's random state untouched) and other model classes are built by open_clip.
    """
    import open_clip

    if spec.weights is not None and _is_plain_clip(cfg):
        with torch.device("meta"):
            model = open_clip.CLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
        state = checked_weights(model, _state(spec, cfg), str(spec.weights))
        if "image" not in towers:
            model.visual = NotLoaded()
            state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        model.load_state_dict(state, strict=True, assign=True)
        if model.attn_mask is not None:  # the causal text mask: not in state dicts, so still on meta
            model.attn_mask = torch.full(model.attn_mask.shape, float("-inf")).triu_(1)
        return model
    name = f"local-dir:{spec.config_file.parent}" if spec.source == "hf-hub" else spec.config
    try:
        with torch.random.fork_rng(), _quiet_logging():
            torch.manual_seed(0)
            model = open_clip.create_model(name, load_weights=False, pretrained_text=False)
        if spec.source in ("open_clip", "hf-hub"):
            open_clip.load_checkpoint(model, str(spec.weights))
        elif spec.weights is not None:
            load_weights(model, _state(spec, cfg), str(spec.weights))
    except (RuntimeError, ValueError, OSError) as e:
        raise ClipzsError(f"cannot create {spec.config} with pretrained {spec.pretrained!r}: {first_line(e)}") from e
    return model


def _tokenizer(spec: ModelSpec, cfg: dict) -> Callable:
    """OpenAI's tokenizer for transformers checkpoints; open_clip's for its names (for hf-hub, from the snapshot)."""
    import open_clip

    text = cfg["text_cfg"]
    if spec.source == "transformers":
        return open_clip.SimpleTokenizer(context_length=text["context_length"])
    if spec.source == "hf-hub" and not text.get("hf_tokenizer_name"):  # a HF tokenizer: open_clip fetches it
        return open_clip.get_tokenizer(f"local-dir:{spec.config_file.parent}")
    return open_clip.get_tokenizer(spec.config)


def load_model(
    name: str | None = "ViT-B/32",
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    spec: ModelSpec | None = None,
    towers: Iterable[str] = TOWERS,
) -> ClipModel:
    """Load a CLIP model with its image preprocessing and tokenizer.

    `pretrained`: "openai" (default for OpenAI names), a checkpoint file (TorchScript, state dict or
    safetensors), a transformers CLIP folder or Hugging Face model id (then `name` may be None), an
    open_clip tag, or "random" for random initialisation (seeded, for tests and speed measurements).
    Precision casts the whole model (`fp32` default on CPU, `fp16` on CUDA, `bf16`). `spec` (from
    `describe_model`) replaces the other arguments; `towers={"text"}` leaves out the image tower where
    that saves work (a plain CLIP with a weights file), for encoding prompts only.
    """
    from open_clip.transform import image_transform_v2

    towers = frozenset(towers)
    if not towers or not towers <= TOWERS:
        raise ClipzsError(f"towers {sorted(towers)} is not valid: use image, text or both")
    spec = spec or describe_model(name, pretrained, device, precision, cache_dir)
    cfg, preprocess = _architecture(spec)
    model = _build(spec, cfg, towers)
    logit_scale = float(model.logit_scale.detach().float().exp())
    model = model.to(device=spec.device, dtype=PRECISIONS[spec.precision]).eval()
    return ClipModel(
        model=model,
        preprocess=image_transform_v2(preprocess, is_train=False),
        tokenizer=_tokenizer(spec, cfg),
        name=spec.name,
        config=spec.config,
        pretrained=spec.pretrained,
        checkpoint=spec.checkpoint,
        precision=spec.precision,
        device=spec.device,
        logit_scale=logit_scale,
        spec=spec,
    )
