"""Reading checkpoint files safely and fitting their tensors onto a model exactly.

TorchScript archives (OpenAI's `.pt`) are read with `torch.jit.load`, `torch.save` state dicts with
`torch.load(weights_only=True)`, safetensors with `safetensors`: nothing but tensors is ever unpickled. A
checkpoint is loaded only when every parameter is present with its shape and no key is unknown.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from .download import first_line
from .errors import ClipzsError

IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder; `torch.save` files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: TorchScript archive, `torch.save` state dict, or safetensors.

    Nothing but tensors is ever unpickled (`weights_only=True`); a wrapping `{"state_dict": ...}` and a
    `module.` prefix (as open_clip's training checkpoints have) are removed. torch's warnings about a
    refused file are kept from the user: the error says what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise ClipzsError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise ClipzsError(f"checkpoint file not found: {path}")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.10+; pickle protocol notes
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(path)
            elif _is_torchscript(path):
                state = torch.jit.load(path, map_location="cpu").state_dict()
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message is the generic "Weights only load failed"; the cause is in the context
        detail = first_line(e.__context__ or e)
        found = re.search(r"GLOBAL (\S+)", detail)
        if found:
            raise ClipzsError(
                f"checkpoint {path} holds objects other than tensors ({found[1]}); refusing to unpickle it"
            ) from e
        raise ClipzsError(f"cannot read checkpoint {path}: truncated or not a checkpoint ({detail})") from e
    except Exception as e:  # torch and safetensors raise many types for damaged files
        raise ClipzsError(f"cannot read checkpoint {path}: truncated or not a checkpoint ({first_line(e)})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipzsError(f"checkpoint {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def checked_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """`state` as `model` names it, refused unless every parameter is present with its shape (floating point where
    the model's is) and no key is unknown.

    `model` may live on the meta device: only names and shapes are compared.
    """
    from open_clip.factory import convert_to_custom_text_state_dict

    from . import hf

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
    mistyped = sorted(
        f"{k} {str(state[k].dtype).removeprefix('torch.')} (model wants floating point)"
        for k in expected.keys() & state.keys()
        if expected[k].is_floating_point() and not state[k].is_floating_point()
    )
    found = (
        ("missing keys", missing),
        ("mis-shaped keys", misshaped),
        ("mis-typed keys", mistyped),
        ("unexpected keys", unexpected),
    )
    problems = [hf.listed(label, items) for label, items in found if items]
    if problems:
        raise ClipzsError(f"checkpoint {source} does not fit this model: " + "; ".join(problems))
    return state


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` exactly: every parameter present with its shape, no unknown keys."""
    model.load_state_dict(checked_weights(model, state, source), strict=True)
