"""Hugging Face transformers CLIP checkpoints (`CLIPModel`: `config.json` plus `model.safetensors` or
`pytorch_model.bin`) mapped onto open_clip's `CLIP`, without importing transformers.

The open_clip config is derived from `config.json` (transformers' `CLIPTextConfig`/`CLIPVisionConfig`
defaults fill what it leaves out, as transformers does), and the weights are renamed key by key, q/k/v
fused into `in_proj_weight/bias` and the two projections transposed. Tokenizer and preprocessing stay
OpenAI's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from .download import hub_files
from .errors import ClipzsError

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
NOT_REPO_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".json"})  # local files
# transformers' defaults (CLIPTextConfig, CLIPVisionConfig, CLIPConfig) for the fields clipzs reads
TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
PROJECTION_DIM = 512
OPENAI_VOCAB = 49408
ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # hidden_act -> open_clip's quick_gelu
LAYER_KEYS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
DERIVED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")  # buffers


def listed(label: str, items: list[str]) -> str:
    """`N label: a, b, c, d, e (+M more)`: key lists short enough for a one-line error."""
    shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
    return f"{len(items)} {label}: {shown}"


def checkpoint_in(folder: Path) -> Path | None:
    """The weights file of a transformers CLIP folder (`config.json` and weights), or None if it is not one."""
    if not (folder / CONFIG).is_file():
        return None
    return next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)


def locate(pretrained: str) -> tuple[Path, Path] | None:
    """(config.json, weights) when `pretrained` is a transformers CLIP folder or a Hub model id, else None.

    A Hub id (`org/name`, not a local path, no checkpoint suffix) is taken from the hub cache, or downloaded.
    """
    path = Path(pretrained).expanduser()
    if path.is_dir():
        weights = checkpoint_in(path)
        if weights is None:
            raise ClipzsError(
                f"pretrained {pretrained} is a directory, not a checkpoint file nor a transformers CLIP folder "
                f"({CONFIG} and {' or '.join(WEIGHTS)})"
            )
        return path / CONFIG, weights
    if REPO_ID.fullmatch(pretrained) and not path.exists() and path.suffix not in NOT_REPO_SUFFIXES:
        config, weights = hub_files(pretrained, [(CONFIG,), WEIGHTS])
        return config, weights
    return None


def _square(value: int | list[int], what: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ClipzsError(f"{what} {value} is not square; open_clip's CLIP needs one size")


def _mlp_ratio(intermediate: int, width: int) -> float:
    """A ratio open_clip turns back into exactly `intermediate` (it computes `int(width * mlp_ratio)`)."""
    ratio = intermediate / width
    return ratio if int(width * ratio) == intermediate else (intermediate + 0.5) / width


def open_clip_config(path: Path) -> dict:
    """open_clip model config (`CLIP(**cfg)` keyword arguments) for the transformers CLIP `config.json` at `path`.

    Refuses what open_clip's CLIP or OpenAI's tokenizer cannot express, naming the field.
    """
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ClipzsError(f"cannot read {path}: {e}") from e
    if not isinstance(raw, dict) or raw.get("model_type") != "clip":
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise ClipzsError(f"{path} describes a {kind or 'non-CLIP'} model, not a transformers CLIPModel")
    # a `*_config_dict` replaces `*_config` field by field, transformers' defaults included (CLIPConfig.__init__)
    text = {**TEXT_DEFAULTS, **(raw.get("text_config_dict") or raw.get("text_config") or {})}
    vision = {**VISION_DEFAULTS, **(raw.get("vision_config_dict") or raw.get("vision_config") or {})}
    problems = []
    for tower, cfg in (("text_config", text), ("vision_config", vision)):
        if cfg["hidden_act"] not in ACTIVATIONS:
            problems.append(f"{tower}.hidden_act is {cfg['hidden_act']!r} (open_clip has quick_gelu and gelu)")
        if cfg["layer_norm_eps"] != 1e-5:
            problems.append(f"{tower}.layer_norm_eps is {cfg['layer_norm_eps']} (open_clip uses 1e-5)")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            problems.append(f"{tower}.hidden_size is not a multiple of num_attention_heads")
    if text["hidden_act"] != vision["hidden_act"]:
        problems.append(f"text and vision hidden_act differ ({text['hidden_act']}, {vision['hidden_act']})")
    if vision["num_channels"] != 3:
        problems.append(f"vision_config.num_channels is {vision['num_channels']} (CLIP takes RGB)")
    if text["vocab_size"] != OPENAI_VOCAB:
        problems.append(f"text_config.vocab_size is {text['vocab_size']} (OpenAI's tokenizer has {OPENAI_VOCAB})")
    if problems:
        raise ClipzsError(f"{path} cannot be mapped onto open_clip's CLIP: " + "; ".join(problems))
    return {
        "embed_dim": raw.get("projection_dim", PROJECTION_DIM),
        "quick_gelu": ACTIVATIONS[vision["hidden_act"]],
        "vision_cfg": {
            "image_size": _square(vision["image_size"], f"{path} vision_config.image_size"),
            "patch_size": _square(vision["patch_size"], f"{path} vision_config.patch_size"),
            "width": vision["hidden_size"],
            "layers": vision["num_hidden_layers"],
            "head_width": vision["hidden_size"] // vision["num_attention_heads"],
            "mlp_ratio": _mlp_ratio(vision["intermediate_size"], vision["hidden_size"]),
        },
        "text_cfg": {
            "context_length": text["max_position_embeddings"],
            "vocab_size": text["vocab_size"],
            "width": text["hidden_size"],
            "heads": text["num_attention_heads"],
            "layers": text["num_hidden_layers"],
            "mlp_ratio": _mlp_ratio(text["intermediate_size"], text["hidden_size"]),
        },
    }


def canonical(cfg: dict) -> str:
    """An open_clip model config with every default filled in, as sorted JSON: equal strings build equal models."""
    full = {
        **cfg,
        "quick_gelu": bool(cfg.get("quick_gelu", False)),
        "vision_cfg": asdict(CLIPVisionCfg(**cfg["vision_cfg"])),
        "text_cfg": asdict(CLIPTextCfg(**cfg["text_cfg"])),
    }
    if not full.get("custom_text"):
        full.pop("custom_text", None)
    return json.dumps(full, sort_keys=True)


def config_name(cfg: dict) -> str:
    """open_clip's name for a config equal to `cfg` (`ViT-B-32-quickgelu` for openai/clip-vit-base-patch32),
    else `hf-<hash of the config>`."""
    key = canonical(cfg)
    for name in open_clip.list_models():
        other = open_clip.get_model_config(name)
        try:
            if other.get("embed_dim") == cfg["embed_dim"] and canonical(other) == key:
                return name
        except (TypeError, KeyError):  # configs for other model classes (timm, HF text towers, CoCa)
            continue
    return "hf-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _key_map(text_layers: int, vision_layers: int) -> dict[str, tuple[str, str]]:
    """Every key of a transformers CLIPModel state dict -> (open_clip key, how): "" copy, "T" transpose,
    "q"/"k"/"v" the part of the fused attention input projection."""
    table = {
        "logit_scale": ("logit_scale", ""),
        "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", ""),
        "text_model.embeddings.position_embedding.weight": ("positional_embedding", ""),
        "text_projection.weight": ("text_projection", "T"),
        "vision_model.embeddings.class_embedding": ("visual.class_embedding", ""),
        "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", ""),
        "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", ""),
        "visual_projection.weight": ("visual.proj", "T"),
    }
    for p in ("weight", "bias"):
        table[f"text_model.final_layer_norm.{p}"] = (f"ln_final.{p}", "")
        table[f"vision_model.pre_layrnorm.{p}"] = (f"visual.ln_pre.{p}", "")
        table[f"vision_model.post_layernorm.{p}"] = (f"visual.ln_post.{p}", "")
    for hf, oc, layers in (
        ("text_model", "transformer", text_layers),
        ("vision_model", "visual.transformer", vision_layers),
    ):
        for i in range(layers):
            a, b = f"{hf}.encoder.layers.{i}", f"{oc}.resblocks.{i}"
            for p in ("weight", "bias"):
                table.update({f"{a}.{x}.{p}": (f"{b}.{y}.{p}", "") for x, y in LAYER_KEYS.items()})
                table.update({f"{a}.self_attn.{q}_proj.{p}": (f"{b}.attn.in_proj_{p}", q) for q in "qkv"})
    return table


def to_open_clip(state: dict[str, torch.Tensor], cfg: dict, source: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel state dict in open_clip's key names and layout; refuses missing or unknown keys."""
    table = _key_map(cfg["text_cfg"]["layers"], cfg["vision_cfg"]["layers"])
    present = state.keys() - set(DERIVED_KEYS)
    problems = [
        listed(label, sorted(keys))
        for label, keys in (("missing keys", table.keys() - present), ("unexpected keys", present - table.keys()))
        if keys
    ]
    if problems:
        raise ClipzsError(
            f"checkpoint {source} is not the transformers CLIPModel its config.json describes: " + "; ".join(problems)
        )
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, (name, how) in table.items():
        if how == "T":
            out[name] = state[key].T.contiguous()
        elif how:
            fused.setdefault(name, {})[how] = state[key]
        else:
            out[name] = state[key]
    out.update({name: torch.cat([parts["q"], parts["k"], parts["v"]]) for name, parts in fused.items()})
    return out
