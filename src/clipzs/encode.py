"""Batched encoding: every (template, class) prompt once, every image once, under inference mode.

Text is encoded in batches of prompts sorted by length, each batch cut to its longest prompt: CLIP's
text transformer is causal and pools at the end-of-text token, so the padding after it can never
change the result, and a 77-token context mostly holds padding (the seed prompts use at most 11).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .cache import ImageEntry, TextEntry
from .errors import ClipzsError
from .models import ClipModel
from .preprocess import Preprocessing, resize_bicubic_like_pil, split_preprocess
from .prompts import build_prompts
from .sources import ImageSource, UnreadableImage

TEXT_BATCH = 256
CHUNK_IMAGES = 1024  # images per cache chunk: what an interruption can lose
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def default_batch_size(device: torch.device) -> int:
    """256 on CUDA; 32 on CPU, the fastest measured for ViT-B/32 on 2 cores (docs/benchmarks.md)."""
    return 256 if device.type == "cuda" else 32


def _trimmable(model: torch.nn.Module) -> bool:
    """True for open_clip CLIP text towers whose output cannot depend on positions after end-of-text."""
    import open_clip

    return (
        isinstance(model, open_clip.CLIP) and model.attn_mask is not None and model.text_pool_type in ("argmax", "eos")
    )


def text_forward(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, computed only up to the longest prompt in the batch when that is exact.

    Mirrors open_clip's `CLIP.encode_text` with the positional embedding and causal mask cut to length.
    """
    from open_clip.transformer import text_global_pool

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
    clip: ClipModel | None,
    prompts: list[str],
    batch_size: int = TEXT_BATCH,
    cache: TextEntry | None = None,
    found: dict[str, np.ndarray] | None = None,
) -> Encoded:
    """Unit-norm features [P, D] (float32, CPU) of `prompts`, batched by similar token length.

    With a cache, only prompts it does not hold (or, given, not in its `found` lookup) are encoded, and those
    are stored for the next run; `clip` may be None when there are none.
    """
    found = dict(found if found is not None else cache.lookup(prompts) if cache else {})
    todo = list(dict.fromkeys(p for p in prompts if p not in found))
    if todo:
        assert clip is not None, "prompts to encode but no model"
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


class _Items(Dataset):
    """Model-sized uint8 pixels [3, S, S] of image i (after the PIL steps), or why it could not be read."""

    def __init__(self, source: ImageSource, preprocessing: Preprocessing):
        self.source, self.preprocessing = source, preprocessing

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, _pixels(self.preprocessing, self.source.load(i)), None
        except UnreadableImage as e:
            return i, None, e.reason


def _pixels(preprocessing: Preprocessing, image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(preprocessing.pixels(image)).permute(2, 0, 1)


def _items(
    source: ImageSource, indices: Sequence[int], preprocessing: Preprocessing, on_device: bool, workers: int
) -> Iterator[tuple[int, torch.Tensor | None, str | None]]:
    """(index, pixels or None, why not) for each of `indices` in order: stored arrays as they are when they are
    resized on the device, else decoded and through the PIL steps, in `workers` processes when random access
    allows, else streamed in this one (a stream is read once, from the first index to the last)."""
    if on_device:
        for i in indices:
            yield i, torch.from_numpy(source.pixels[i]), None
    elif workers and source.random_access:
        items = _Items(source, preprocessing)
        yield from DataLoader(items, sampler=list(indices), num_workers=workers, batch_size=None, prefetch_factor=4)
    else:
        for i, image in source.read(indices):
            if isinstance(image, UnreadableImage):
                yield i, None, image.reason
            else:
                yield i, _pixels(preprocessing, image), None


def resizes_on_device(clip: ClipModel, source: ImageSource, preprocessing: Preprocessing, wanted: bool | None) -> bool:
    """Whether to upload stored arrays and resize them on the device (default: on CUDA, where it is free).

    Only for square arrays under a Resize(S)+CenterCrop(S) transform, and only after the emulation has
    given Pillow's bytes for the first images; otherwise it warns and keeps the PIL path.
    """
    if wanted is None:
        wanted = clip.device.type == "cuda"
    pixels = source.pixels
    square = pixels is not None and pixels.shape[1] == pixels.shape[2]
    if not (wanted and square and preprocessing.square):
        return False
    sample = pixels[:4]
    pil = np.stack([preprocessing.pixels(Image.fromarray(a)) for a in sample]).transpose(0, 3, 1, 2)
    if np.array_equal(resize_bicubic_like_pil(torch.from_numpy(sample), preprocessing.square).numpy(), pil):
        return True
    warnings.warn("batched resize does not match this Pillow's output; resizing images with PIL instead", stacklevel=2)
    return False


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


@dataclass(frozen=True)
class ImageFeatures:
    """Unit-norm features [N, D] (a row of NaN for each image that could not be read), how many images were
    encoded now (the rest came from the cache), and why each unreadable image could not be read."""

    features: torch.Tensor
    computed: int
    skipped: dict[int, str] = field(default_factory=dict)


def strict_stop(source: ImageSource, index: int, reason: str) -> ClipzsError:
    """The error a strict encoding stops with at unreadable image `index`, the same from every engine."""
    return ClipzsError(f"cannot read image {source.item_name(index)}: {reason} (strict)")


def chunk_ranges(n: int) -> list[tuple[int, int]]:
    """[start, stop) of the cache chunks of n images."""
    return [(s, min(s + CHUNK_IMAGES, n)) for s in range(0, n, CHUNK_IMAGES)]


def _width(clip: ClipModel) -> int:
    """The image features' width, for a chunk in which no image could be read."""
    return int(clip.model.visual.output_dim)


def cached_images(cache: ImageEntry) -> ImageFeatures:
    """Every image's features from a complete cache entry, with why the unreadable ones could not be read."""
    features = torch.from_numpy(cache.load())
    skipped = cache.skipped()
    unexplained = torch.isnan(features[:, 0]).nonzero().flatten().tolist()
    skipped.update({i: "could not be read" for i in unexplained if i not in skipped})
    return ImageFeatures(features, 0, dict(sorted(skipped.items())))


class ChunkEncoder:
    """Encodes the images of one cache chunk in batches of `batch_size` readable images, in order: the unit of
    work of every engine, so that the same chunk gives the same bits wherever it is encoded."""

    def __init__(self, clip: ClipModel, batch_size: int, on_device: bool = False, compile: bool = False):
        self.clip, self.batch_size, self.on_device, self.compile = clip, batch_size, on_device, compile
        self.preprocessing = split_preprocess(clip.preprocess)
        self.encoder = image_encoder(clip, compile)

    @torch.inference_mode()
    def run(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """Unit-norm features [len(batch), D] of uint8 pixel tensors [3, S, S] (or stored arrays to resize)."""
        x = torch.stack(batch).to(self.clip.device, non_blocking=True)
        if self.on_device:
            x = resize_bicubic_like_pil(x, self.preprocessing.square)
        x = self.preprocessing.normalize(x, self.clip.dtype)
        if self.compile and len(x) < self.batch_size:
            x = torch.cat([x, x.new_zeros(self.batch_size - len(x), *x.shape[1:])])
        return F.normalize(self.encoder(x)[: len(batch)].float(), dim=-1).cpu()

    def chunk(self, items: Iterable[tuple[torch.Tensor | None, str | None]], rows: int) -> tuple[torch.Tensor, dict]:
        """Features [rows, D] of a chunk's `rows` items (pixels, or None and why not): NaN rows for unreadable
        images, and {position in the chunk: reason}."""
        out = torch.full((rows, _width(self.clip)), torch.nan)
        reasons: dict[int, str] = {}
        batch, at = [], []
        for position, (pixels, reason) in enumerate(items):
            if pixels is None:
                reasons[position] = reason
            else:
                batch.append(pixels)
                at.append(position)
            if batch and (len(batch) == self.batch_size or position == rows - 1):
                out[at] = self.run(batch)
                batch, at = [], []
        return out, reasons


@torch.inference_mode()
def encode_images(
    clip: ClipModel,
    source: ImageSource,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    cache: ImageEntry | None = None,
    resize_on_device: bool | None = None,
    compile: bool = False,
    strict: bool = False,
) -> ImageFeatures:
    """Unit-norm features [N, D] (float32, CPU) of every image, through the model's own preprocessing.

    Images are encoded in chunks of CHUNK_IMAGES; with a cache each finished chunk is stored at once, so an
    interrupted run resumes from the first chunk it does not hold. An image that cannot be read gets a row of
    NaN and its reason is kept (and cached), unless `strict`, which stops at the first with a ClipzsError.
    `workers` DataLoader processes run the PIL steps (default: none on CPU, where the model already uses every
    core, or when images are resized on the device; up to 8 to feed a GPU). With `compile` every batch is padded
    to `batch_size` so that a single graph serves them all.
    """
    preprocessing = split_preprocess(clip.preprocess)
    ranges = cache.missing() if cache else chunk_ranges(len(source))
    todo = sum(stop - start for start, stop in ranges)
    on_device = resizes_on_device(clip, source, preprocessing, resize_on_device)
    if workers is None:
        workers = 0 if on_device or clip.device.type != "cuda" else min(8, max(1, (os.cpu_count() or 2) - 1))
    if clip.device.type == "cpu":
        keep_malloc_arenas()
    encoder = ChunkEncoder(clip, batch_size, on_device, compile and todo > 0)
    features = None if cache else torch.full((len(source), _width(clip)), torch.nan)
    skipped: dict[int, str] = {}
    items = _items(source, [i for start, stop in ranges for i in range(start, stop)], preprocessing, on_device, workers)

    def chunk_items(start: int, stop: int, bar: tqdm) -> Iterator[tuple[torch.Tensor | None, str | None]]:
        for i, pixels, reason in (next(items) for _ in range(stop - start)):
            if pixels is None and strict:
                raise strict_stop(source, i, reason)
            bar.update(1)
            yield pixels, reason

    with tqdm(total=len(source), initial=len(source) - todo, desc="images", unit="img", disable=not progress) as bar:
        for start, stop in ranges:
            chunk, reasons = encoder.chunk(chunk_items(start, stop, bar), stop - start)
            reasons = {start + k: v for k, v in reasons.items()}
            skipped.update(reasons)
            if cache:
                cache.write(start, chunk.numpy(), reasons)
            else:
                features[start:stop] = chunk
    if cache:
        return replace(cached_images(cache), computed=todo)
    return ImageFeatures(features, todo, dict(sorted(skipped.items())))
