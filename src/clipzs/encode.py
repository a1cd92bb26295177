"""Batched encoding: every (template, class) prompt once, every image once, under inference mode.

Text is encoded in batches of prompts sorted by length, each batch cut to its longest prompt: CLIP's
text transformer is causal and pools at the end-of-text token, so the padding after it can never
change the result, and a 77-token context mostly holds padding (the seed prompts use at most 11).
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .datasets import ImageSet
from .models import ClipModel
from .prompts import build_prompts

TEXT_BATCH = 256


@dataclass(frozen=True)
class Features:
    """What one pass over the images and prompts yields; everything downstream is tensor maths on it."""

    image: torch.Tensor  # [N, D] float32, unit norm
    text: torch.Tensor  # [T, C, D] float32, unit norm
    labels: torch.Tensor  # [N] int64
    logit_scale: float

    def __post_init__(self) -> None:
        n, d = self.image.shape
        assert self.text.ndim == 3 and self.text.shape[2] == d, (self.image.shape, self.text.shape)
        assert self.labels.shape == (n,), (self.labels.shape, n)


def _trimmable(model: torch.nn.Module) -> bool:
    """True for open_clip CLIP text towers whose output cannot depend on positions after end-of-text."""
    return (
        isinstance(model, open_clip.CLIP) and model.attn_mask is not None and model.text_pool_type in ("argmax", "eos")
    )


def text_forward(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, computed only up to the longest prompt in the batch when that is exact.

    Mirrors open_clip's `CLIP.encode_text` with the positional embedding and causal mask cut to length.
    """
    if not _trimmable(model):
        return model.encode_text(tokens)
    eot = tokens.argmax(dim=-1) if model.text_pool_type == "argmax" else (tokens == model.text_eos_id).int().argmax(-1)
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection if model.text_projection is not None else x


@torch.inference_mode()
def encode_text(
    clip: ClipModel, prompts: list[str], batch_size: int = TEXT_BATCH, progress: bool = False
) -> torch.Tensor:
    """Unit-norm features [P, D] (float32, on CPU) of `prompts`, batched by similar token length."""
    tokens = clip.tokenizer(prompts)
    order = torch.argsort(tokens.argmax(dim=-1), stable=True)
    chunks = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="text", unit="batch", disable=not progress):
        batch = tokens[order[start : start + batch_size]].to(clip.device)
        chunks.append(F.normalize(text_forward(clip.model, batch).float(), dim=-1).cpu())
    features = torch.empty(len(prompts), chunks[0].shape[1])
    features[order] = torch.cat(chunks)
    return features


def encode_prompts(
    clip: ClipModel, templates: list[str], classnames: list[str], progress: bool = False
) -> torch.Tensor:
    """Text features [T, C, D] for every template filled with every class name."""
    prompts = [p for row in build_prompts(templates, classnames) for p in row]
    return encode_text(clip, prompts, progress=progress).view(len(templates), len(classnames), -1)


class _Preprocessed(Dataset):
    def __init__(self, images: ImageSet, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images.image(i))


@torch.inference_mode()
def encode_images(
    clip: ClipModel, images: ImageSet, batch_size: int = 64, workers: int = 0, progress: bool = True
) -> torch.Tensor:
    """Unit-norm features [N, D] (float32, on CPU) of every image, through the model's own preprocessing."""
    loader = DataLoader(
        _Preprocessed(images, clip.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=clip.device.type == "cuda",
    )
    features: torch.Tensor | None = None
    start = 0
    with tqdm(total=len(images), desc="images", unit="img", disable=not progress) as bar:
        for batch in loader:
            out = clip.model.encode_image(batch.to(clip.device, clip.dtype, non_blocking=True))
            out = F.normalize(out.float(), dim=-1).cpu()
            if features is None:
                features = torch.empty(len(images), out.shape[1])
            features[start : start + len(out)] = out
            start += len(out)
            bar.update(len(out))
    return features
