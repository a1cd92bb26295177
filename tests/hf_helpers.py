"""Transformers CLIP checkpoints for tests: tiny random `CLIPModel`s saved as folders, laid out as a
Hugging Face hub cache, and converted from open_clip weights (independently of `clipzs.hf`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import helpers
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

REVISION = "0123456789abcdef0123456789abcdef01234567"


def tiny_config(hidden_act: str = "quick_gelu", open_clip: dict | None = None) -> CLIPConfig:
    """A tiny transformers CLIP config; `open_clip` (a config like `helpers.TINY_VIT`) sets the same architecture."""
    cfg = open_clip or helpers.TINY_VIT
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    return CLIPConfig(
        projection_dim=cfg["embed_dim"],
        text_config={
            "hidden_size": text["width"],
            "intermediate_size": 4 * text["width"],
            "num_attention_heads": text["heads"],
            "num_hidden_layers": text["layers"],
            "max_position_embeddings": text["context_length"],
            "hidden_act": hidden_act,
        },
        vision_config={
            "hidden_size": vision["width"],
            "intermediate_size": 4 * vision["width"],
            "num_attention_heads": vision["width"] // vision["head_width"],
            "num_hidden_layers": vision["layers"],
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "hidden_act": hidden_act,
        },
    )


def tiny_model(config: CLIPConfig, seed: int = 0) -> CLIPModel:
    """A random CLIPModel whose logit scale is OpenAI's (100 after exp)."""
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(100.0)))
    return model


def save_folder(model: CLIPModel, folder: Path, fmt: str = "safetensors") -> Path:
    """`config.json` and `model.safetensors` (save_pretrained), or `pytorch_model.bin` with the `position_ids`
    buffers older transformers saved."""
    if fmt == "safetensors":
        model.save_pretrained(folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = dict(model.state_dict())
    state.update({name: b for name, b in model.named_buffers() if name.endswith("position_ids")})
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def hub_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    """Files laid out as huggingface_hub caches them: blobs named by SHA256, snapshot symlinks, refs/main.

    Returns the snapshot folder.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


def cache_folder(cache: Path, repo_id: str, folder: Path) -> Path:
    """Every file of a saved model folder, in a hub cache."""
    return hub_cache(cache, repo_id, {p.name: p for p in folder.iterdir() if p.is_file()})


def open_clip_to_transformers(state: dict[str, torch.Tensor], layers: tuple[int, int]) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict in transformers' CLIPModel layout (text layers, vision layers)."""
    out = {
        "logit_scale": state["logit_scale"],
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].T,
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].T,
    }
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    names["attn.out_proj"] = "self_attn.out_proj"
    for tower, prefix, n in (
        ("text_model", "transformer", layers[0]),
        ("vision_model", "visual.transformer", layers[1]),
    ):
        for i in range(n):
            src, dst = f"{prefix}.resblocks.{i}", f"{tower}.encoder.layers.{i}"
            for p in ("weight", "bias"):
                for a, b in names.items():
                    out[f"{dst}.{b}.{p}"] = state[f"{src}.{a}.{p}"]
                q, k, v = state[f"{src}.attn.in_proj_{p}"].chunk(3)
                out.update({f"{dst}.self_attn.q_proj.{p}": q, f"{dst}.self_attn.k_proj.{p}": k})
                out[f"{dst}.self_attn.v_proj.{p}"] = v
    return {k: v.contiguous() for k, v in out.items()}


def transformers_features(
    model: CLIPModel, pixels: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and text features from transformers' own forward."""
    with torch.inference_mode():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=tokens)
    image = image if isinstance(image, torch.Tensor) else image.pooler_output  # transformers 5 returns outputs
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)
