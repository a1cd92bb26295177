"""Model names, checkpoint download and verification, checkpoint loading, precision and device.

OpenAI's nine CLIP models are data (`openai_models.json`: name, open_clip QuickGELU config, URL whose
second-to-last path segment is the file's SHA256, as in the official `clip` package). Their weights
live where `clip.load` keeps them (`~/.cache/clip`), so an existing download is reused. Any other
open_clip name and pretrained tag is handed to open_clip unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import open_clip
import torch
from open_clip.factory import convert_to_custom_text_state_dict

from .download import fetch, file_digest
from .errors import ClipzsError

OPENAI_MODELS: dict[str, dict[str, str]] = json.loads(
    resources.files(__package__).joinpath("openai_models.json").read_text()
)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
RANDOM = "random"
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors"})


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


def openai_name(name: str) -> str | None:
    """The OpenAI model name for `name`, which may be OpenAI's (`ViT-B/32`) or open_clip's (`ViT-B-32`)."""
    if name in OPENAI_MODELS:
        return name
    for openai, entry in OPENAI_MODELS.items():
        if name in (entry["config"], entry["config"].removesuffix("-quickgelu")):
            return openai
    return None


def resolve(name: str, pretrained: str | None) -> tuple[str, str]:
    """The open_clip config name and pretrained source for a model name and optional pretrained value.

    OpenAI names always use the QuickGELU config their weights were trained with; an open_clip name
    with `pretrained="openai"` is treated as the OpenAI model. A `.json` path is an open_clip model
    config (used for custom and test models).
    """
    if name.endswith(".json"):
        if not Path(name).is_file():
            raise ClipzsError(f"model config file not found: {name}")
        open_clip.add_model_config(name)
        return Path(name).stem, pretrained or RANDOM
    openai = openai_name(name)
    if openai and (name in OPENAI_MODELS or pretrained in (None, "openai")):
        return OPENAI_MODELS[openai]["config"], pretrained or "openai"
    if name in open_clip.list_models():
        if pretrained is None:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ClipzsError(
                f"model {name} needs --pretrained: one of {', '.join(tags) or 'none known'}, "
                f"a checkpoint file, or '{RANDOM}'"
            )
        return name, pretrained
    raise ClipzsError(
        f"unknown model {name!r}: use an OpenAI name ({', '.join(OPENAI_MODELS)}), "
        "an open_clip name (see `open_clip.list_models()`), or a model config .json file"
    )


def available_models(cache_dir: str | Path | None = None) -> list[dict]:
    """Every model clipzs can name: OpenAI's (with whether its checkpoint is in the cache folder) and
    open_clip's pretrained (name, tag) pairs (with whether the Hugging Face cache holds their weights)."""
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
    """Path of OpenAI's checkpoint for `name`, verified against the SHA256 in its URL; downloads if needed."""
    url = OPENAI_MODELS[name]["url"]
    expected = openai_sha256(name)
    path = (cache_dir or default_cache_dir()) / os.path.basename(url)
    if path.is_file() and file_digest(path, "sha256") == expected:
        return path
    what = f"checkpoint for {name}" + (" (present but with the wrong SHA256)" if path.exists() else "")
    return fetch(url, path, "sha256", expected, what)


def _looks_like_file(pretrained: str) -> bool:
    return Path(pretrained).suffix in CHECKPOINT_SUFFIXES or "/" in pretrained or Path(pretrained).exists()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder; `torch.save` files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: TorchScript archive, `torch.save` state dict, or safetensors.

    Nothing but tensors is ever unpickled (`weights_only=True`); a wrapping `{"state_dict": ...}` and a
    `module.` prefix (as open_clip's training checkpoints have) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipzsError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        elif _is_torchscript(path):
            with warnings.catch_warnings():  # torch 2.10+ calls TorchScript deprecated; OpenAI ships it
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ClipzsError(f"checkpoint {path} holds objects other than tensors; refusing to unpickle it") from e
    except Exception as e:  # torch and safetensors raise many types for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClipzsError(f"cannot read checkpoint {path}: truncated or not a checkpoint ({first})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipzsError(f"checkpoint {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _listed(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
    return f"{len(items)} {label}: {shown}"


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` exactly: every parameter present with its shape, no unknown keys."""
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or k.rsplit(".", 1)[-1] not in IGNORED_KEYS}
    if "logit_scale" in state and state["logit_scale"].numel() == 1:
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} (model wants {tuple(expected[k].shape)})"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    problems = [
        _listed(label, items)
        for label, items in (("missing keys", missing), ("mis-shaped keys", misshaped), ("unexpected keys", unexpected))
        if items
    ]
    if problems:
        raise ClipzsError(f"checkpoint {source} does not fit this model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


@contextmanager
def _quiet_logging(quiet: bool):
    logging.disable(logging.WARNING if quiet else logging.NOTSET)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def load_model(
    name: str = "ViT-B/32",
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    cache_dir: str | Path | None = None,
) -> ClipModel:
    """Load a CLIP model with its image preprocessing and tokenizer.

    `pretrained`: "openai" (default for OpenAI names), a checkpoint file (TorchScript, state dict or
    safetensors), an open_clip tag, or "random" for random initialisation (seeded, for tests and speed
    measurements). Precision casts the whole model (`fp32` default on CPU, `fp16` on CUDA, `bf16`).
    """
    device = torch.device(device or default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClipzsError("--device cuda was asked for but CUDA is not available")
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise ClipzsError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    config, pretrained = resolve(name, pretrained)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    tag = path = checkpoint = None
    openai = openai_name(name)
    if pretrained == "openai" and openai:
        path = openai_checkpoint(openai, cache_dir)
        checkpoint = f"sha256:{openai_sha256(openai)}"
    elif pretrained != RANDOM and _looks_like_file(pretrained):
        path = Path(pretrained).expanduser()
    elif pretrained != RANDOM:
        tags = open_clip.list_pretrained_tags_by_model(config)
        if pretrained not in tags:
            raise ClipzsError(
                f"unknown pretrained tag {pretrained!r} for {config}: use one of "
                f"{', '.join(tags) or 'none known'}, a checkpoint file, or '{RANDOM}'"
            )
        tag = pretrained

    state = read_state_dict(path) if path else None
    try:
        # seeded random initialisation without touching the caller's random state; open_clip warns
        # "initialized randomly" before we load weights
        with torch.random.fork_rng(), _quiet_logging(tag is None):
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                config, pretrained=tag, cache_dir=str(cache_dir) if cache_dir and tag else None
            )
    except RuntimeError as e:
        raise ClipzsError(f"cannot create {config} with pretrained {pretrained!r}: {e}") from e
    if state is not None:
        load_weights(model, state, str(path))
    logit_scale = float(model.logit_scale.detach().float().exp())
    model = model.to(device=device, dtype=PRECISIONS[precision]).eval()
    if checkpoint is None:
        checkpoint = f"sha256:{file_digest(path, 'sha256')}" if path else (f"open_clip:{tag}" if tag else RANDOM)
    return ClipModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(config),
        name=name,
        config=config,
        pretrained=pretrained,
        checkpoint=checkpoint,
        precision=precision,
        device=device,
        logit_scale=logit_scale,
    )
