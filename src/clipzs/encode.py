"""Batched encoding: every (template, class) prompt once, every image once, under inference mode.

Text is encoded in batches of prompts sorted by length, each batch cut to its longest prompt: CLIP's
text transformer is causal and pools at the end-of-text token, so the padding after it can never
change the result, and a 77-token context mostly holds padding (the seed prompts use at most 11).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .cache import ImageEntry, TextEntry
from .datasets import ImageSet
from .models import ClipModel
from .preprocess import Preprocessing, resize_bicubic_like_pil, split_preprocess
from .prompts import build_prompts

TEXT_BATCH = 256
CHUNK = 1024  # images per cache chunk: what an interruption can lose
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


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


@dataclass(frozen=True)
class Encoded:
    """Features and how many of them were computed now (the rest came from the feature cache)."""

    features: torch.Tensor
    computed: int


@torch.inference_mode()
def encode_text(
    clip: ClipModel, prompts: list[str], batch_size: int = TEXT_BATCH, cache: TextEntry | None = None
) -> Encoded:
    """Unit-norm features [P, D] (float32, CPU) of `prompts`, batched by similar token length.

    With a cache, only prompts it does not hold are encoded, and those are stored for the next run.
    """
    found = cache.lookup(prompts) if cache else {}
    todo = list(dict.fromkeys(p for p in prompts if p not in found))
    if todo:
        tokens = clip.tokenizer(todo)
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)
        chunks = []
        for start in range(0, len(todo), batch_size):
            batch = tokens[order[start : start + batch_size]].to(clip.device)
            chunks.append(F.normalize(text_forward(clip.model, batch).float(), dim=-1).cpu())
        computed = torch.empty(len(todo), chunks[0].shape[1])
        computed[order] = torch.cat(chunks)
        if cache:
            cache.store(todo, computed.numpy())
        found.update({p: computed[i] for i, p in enumerate(todo)})
    features = torch.stack([torch.as_tensor(found[p]) for p in prompts]) if prompts else torch.empty(0)
    return Encoded(features, len(todo))


def encode_prompt_matrix(clip: ClipModel, prompts: list[list[str]], cache: TextEntry | None = None) -> Encoded:
    """Text features [T, C, D] of prompts [T][C]."""
    encoded = encode_text(clip, [p for row in prompts for p in row], cache=cache)
    return Encoded(encoded.features.view(len(prompts), len(prompts[0]), -1), encoded.computed)


def encode_prompts(
    clip: ClipModel, templates: list[str], classnames: list[str], cache: TextEntry | None = None
) -> Encoded:
    """Text features [T, C, D] for every template filled with every class name."""
    return encode_prompt_matrix(clip, build_prompts(templates, classnames), cache)


class _Pixels(Dataset):
    """uint8 model-sized pixels [3, S, S] per image, after the PIL steps of the model's preprocessing."""

    def __init__(self, images: ImageSet, preprocessing: Preprocessing):
        self.images, self.preprocessing = images, preprocessing

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.preprocessing.pixels(self.images.image(i))).permute(2, 0, 1)


class _RawPixels(Dataset):
    """The stored uint8 arrays [H, W, 3] themselves, to be resized on the model's device."""

    def __init__(self, images: ImageSet):
        self.pixels = images.pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.pixels[i])


def resizes_on_device(clip: ClipModel, images: ImageSet, preprocessing: Preprocessing, wanted: bool | None) -> bool:
    """Whether to upload stored arrays and resize them on the device (default: on CUDA, where it is free).

    Only for square arrays under a Resize(S)+CenterCrop(S) transform, and only after the emulation has
    given Pillow's bytes for the first images; otherwise it warns and keeps the PIL path.
    """
    if wanted is None:
        wanted = clip.device.type == "cuda"
    square = images.pixels is not None and images.pixels.shape[1] == images.pixels.shape[2]
    if not (wanted and square and preprocessing.square):
        return False
    sample = images.pixels[:4]
    pil = np.stack([preprocessing.pixels(Image.fromarray(a)) for a in sample]).transpose(0, 3, 1, 2)
    if np.array_equal(resize_bicubic_like_pil(torch.from_numpy(sample), preprocessing.square).numpy(), pil):
        return True
    warnings.warn("batched resize does not match this Pillow's output; resizing images with PIL instead", stacklevel=2)
    return False


def _batches(ranges: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, stop))) for start, stop in ranges for s in range(start, stop, batch_size)]


def keep_malloc_arenas() -> None:
    """Stop glibc from returning large freed buffers to the OS and faulting them in again on every batch.

    Measured with ViT-B/32 in bf16 at batch 64 on 2 cores: 31 images/s with glibc's defaults, 38 with
    these (the same as `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=
    4294967296`). Process-wide and harmless elsewhere; a no-op where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 4 << 30)


def image_encoder(clip: ClipModel, compile: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """`clip.model.encode_image`, or that compiled by Inductor with the weights frozen into the graph
    (`compile`): tens of seconds to compile, so only worth it for large image sets (docs/benchmarks.md)."""
    if not compile:
        return clip.model.encode_image
    import torch._inductor.config

    torch._inductor.config.freezing = True
    return torch.compile(clip.model.encode_image, dynamic=False)


@torch.inference_mode()
def encode_images(
    clip: ClipModel,
    images: ImageSet,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    cache: ImageEntry | None = None,
    resize_on_device: bool | None = None,
    compile: bool = False,
) -> Encoded:
    """Unit-norm features [N, D] (float32, CPU) of every image, through the model's own preprocessing.

    Images are encoded in chunks of CHUNK; with a cache each finished chunk is stored at once, so an
    interrupted run resumes from the first chunk it does not hold. `workers` DataLoader processes run
    the PIL steps (default: none on CPU, where the model already uses every core, or when images are
    resized on the device; up to 8 to feed a GPU). With `compile` every batch is padded to `batch_size` so
    that a single graph serves them all.
    """
    preprocessing = split_preprocess(clip.preprocess)
    ranges = cache.missing() if cache else [(s, min(s + CHUNK, len(images))) for s in range(0, len(images), CHUNK)]
    todo = sum(stop - start for start, stop in ranges)
    on_device = resizes_on_device(clip, images, preprocessing, resize_on_device)
    source = _RawPixels(images) if on_device else _Pixels(images, preprocessing)
    if workers is None:
        workers = 0 if on_device or clip.device.type != "cuda" else min(8, max(1, (os.cpu_count() or 2) - 1))
    loader = DataLoader(
        source, batch_sampler=_batches(ranges, batch_size), num_workers=workers, pin_memory=clip.device.type == "cuda"
    )
    if clip.device.type == "cpu":
        keep_malloc_arenas()
    encoder = image_encoder(clip, compile and todo > 0)
    features = None
    done: list[torch.Tensor] = []
    pending = iter(ranges)
    start, stop = next(pending, (0, 0))
    with tqdm(total=len(images), initial=len(images) - todo, desc="images", unit="img", disable=not progress) as bar:
        for batch in loader if todo else []:
            x = batch.to(clip.device, non_blocking=True)
            if on_device:
                x = resize_bicubic_like_pil(x, preprocessing.square)
            x = preprocessing.normalize(x, clip.dtype)
            if compile and len(x) < batch_size:
                x = torch.cat([x, x.new_zeros(batch_size - len(x), *x.shape[1:])])
            out = encoder(x)[: len(batch)]
            done.append(F.normalize(out.float(), dim=-1).cpu())
            bar.update(len(batch))
            if sum(len(d) for d in done) == stop - start:
                rows = torch.cat(done)
                if cache:
                    cache.write(start, rows.numpy())
                else:
                    if features is None:
                        features = torch.empty(len(images), rows.shape[1])
                    features[start:stop] = rows
                done = []
                start, stop = next(pending, (0, 0))
    return Encoded(torch.from_numpy(cache.load()) if cache else features, todo)
