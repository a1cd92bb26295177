"""The encoding stage: a dataset split and a model, checked together, then image and text features through the
feature cache, loading only the parts of the model the cache lacks (none, when everything is cached).

The local engine encodes here (`encode.encode_images`); `--engine ray` hands the images to `engines.ray`, which
fills the same cache chunks.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import prompts as prompt_lib
from .cache import FeatureCache, ImageEntry, TextEntry
from .encode import CHUNK_IMAGES, cached_images, default_batch_size, encode_images, encode_text
from .engines import require
from .errors import ClipzsError, ClipzsWarning
from .models import ClipModel, ModelSpec, NotLoaded, describe_model, load_model
from .options import Setup, cached_model_name
from .results import Skipped
from .scoring import Features
from .sources import ImageSource, open_source
from .storage import writable_folder


def open_images(setup: Setup) -> ImageSource:
    """The dataset split of `setup` (its first `limit` images), checked to be non-empty."""
    source = open_source(setup.dataset, setup.data_root, setup.split)
    if setup.limit is not None and setup.limit < len(source):
        source = source.subset(np.arange(setup.limit))
    if len(source) == 0:
        raise ClipzsError(f"{source.name}/{source.split} holds no images")
    return source


def prepare(setup: Setup) -> tuple[ImageSource, ModelSpec]:
    """The images and the model's description, each checked, so a missing dataset and a missing checkpoint are
    reported together, before any work."""
    require(setup.engine)
    if setup.feature_cache is not None and "://" in str(setup.feature_cache):
        raise ClipzsError(
            f"feature_cache {setup.feature_cache} is a URL: give a folder (a mounted shared filesystem on a cluster; "
            "see docs/scale.md)",
            parameter="feature_cache",
        )
    problems: list[ClipzsError] = []
    found = []
    for step in (
        lambda: open_images(setup),
        lambda: describe_model(setup.model, setup.pretrained, setup.device, setup.precision, setup.cache_dir),
    ):
        try:
            found.append(step())
        except ClipzsError as e:
            problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ClipzsError("; and ".join(str(p) for p in problems))
    return found[0], found[1]


def _config_digests(spec: ModelSpec) -> dict[str, str]:
    """SHA256 of the model's config files (a `--model` .json, a transformers or open_clip config): editing one
    changes the architecture under the same name, so it must change the cache key too."""
    files = {
        "model_config_sha256": Path(spec.name) if spec.name and spec.name.endswith(".json") else None,
        "config_file_sha256": spec.config_file,
    }
    return {k: hashlib.sha256(f.read_bytes()).hexdigest() for k, f in files.items() if f is not None and f.is_file()}


def feature_keys(spec: ModelSpec, source: ImageSource) -> tuple[dict, dict]:
    """Cache keys: text features depend on the model (its config files' contents included) and its numerics;
    image features also on the preprocessing and the exact images."""
    text = {
        "model": cached_model_name(spec.name),
        "config": spec.config,
        "checkpoint": spec.checkpoint,
        "precision": spec.precision,
        "device": spec.device.type,
        **_config_digests(spec),
    }
    image = {
        **text,
        "preprocess": spec.preprocess,
        "dataset": source.name,
        "split": source.split,
        "images": source.fingerprint(),
    }
    return text, image


def open_cache(setup: Setup) -> FeatureCache | None:
    """The feature cache, or None when it is off or cannot be written (said once: the run goes on uncached)."""
    if not setup.use_cache:
        return None
    cache = FeatureCache(setup.feature_cache)
    problem = writable_folder(cache.root)
    if problem:
        warnings.warn(
            ClipzsWarning(
                f"feature cache {cache.root} cannot be written ({problem}); continuing without it "
                "(use_cache=False says so and silences this)",
                parameter="use_cache",
            ),
            stacklevel=3,
        )
        return None
    return cache


@dataclass(frozen=True)
class Encoding:
    """One pass over a set of images and the prompts: what every later stage reads."""

    source: ImageSource
    spec: ModelSpec
    prompts: prompt_lib.PromptSet
    classes: list[str]
    features: Features  # the readable images only
    kept: np.ndarray  # [N'] their indices in `source`
    skipped: tuple[Skipped, ...]
    encoded: dict[str, int]
    seconds: dict[str, float]
    clip: ClipModel | None  # None when every feature came from the cache
    note: str | None = None  # how the images were encoded, where that needs saying (a Ray run)


class _Laps:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0) + now - self.t, 3)
        self.t = now


def _warn_overlong(clip: ClipModel, prompts: list[str]) -> None:
    """Warn once per prompt that is longer than the text encoder reads (it is cut, and the rest is lost)."""
    encode = getattr(clip.tokenizer, "encode", None)
    if encode is None:  # not open_clip's BPE tokenizer: its own truncation rules apply
        return
    context = int(getattr(clip.tokenizer, "context_length", 77))
    for prompt, tokens in prompt_lib.overlong_prompts(prompts, lambda p: len(encode(p)) + 2, context):
        shown = prompt if len(prompt) <= 70 else prompt[:67] + "..."
        warnings.warn(
            f"prompt {shown!r} has {tokens} tokens; the text encoder reads the first {context}, so the rest is cut",
            ClipzsWarning,
            stacklevel=4,
        )


def _has_tower(clip: ClipModel, tower: str) -> bool:
    """Whether `clip` was loaded with `tower` (`load_model(towers={"text"})` leaves the image tower out)."""
    return tower == "text" or not isinstance(clip.model.visual, NotLoaded)


def _check_finite(features: Features, spec: ModelSpec) -> None:
    """Refuse features that are not finite: every score, rank and interval computed from them would be noise."""
    for what, values in (("prompts", features.text), ("images", features.image)):
        bad = int((~torch.isfinite(values).all(dim=-1)).sum())
        if bad:
            raise ClipzsError(
                f"the model's features of {bad} of the {values[..., 0].numel()} {what} are not finite (NaN or inf): "
                f"its weights ({spec.pretrained}) are damaged, or overflow at precision {spec.precision}"
            )
    if not math.isfinite(features.logit_scale):
        scale = features.logit_scale
        raise ClipzsError(f"the model's logit scale is {scale}: its weights ({spec.pretrained}) are damaged")


def encode(
    setup: Setup, source: ImageSource, spec: ModelSpec, clip: ClipModel | None = None, cache: FeatureCache | None = None
) -> Encoding:
    """Image and text features of `source` under `setup`, through the feature cache. The model is loaded only
    for what the cache lacks: neither tower when everything is cached, the text tower alone for new prompts."""
    laps = _Laps()
    names = prompt_lib.class_names(setup.dataset, source.classes, setup.classnames)
    prompts = prompt_lib.dataset_prompts(setup.templates, setup.dataset, names, own=source.templates)
    flat = [p for row in prompts.prompts for p in row]
    text_key, image_key = feature_keys(spec, source)
    text_entry: TextEntry | None = cache.texts(text_key) if cache else None
    image_entry: ImageEntry | None = cache.images(image_key, len(source), CHUNK_IMAGES) if cache else None
    found = text_entry.lookup(flat) if text_entry else {}
    facts = text_entry.facts() if text_entry else None
    missing = [p for p in dict.fromkeys(flat) if p not in found]
    images_cached = image_entry is not None and not image_entry.missing()
    towers = set()
    if not images_cached:
        towers.add("image")
    if missing or facts is None or ("image" in towers and setup.engine == "ray"):
        towers.add("text")  # Ray's workers build their own image towers: here, the text tower and preprocessing
    if setup.engine == "ray":
        towers.discard("image")
    if towers and (clip is None or not all(_has_tower(clip, t) for t in towers)):
        clip = load_model(spec=spec, towers=frozenset(towers))
        laps("load_model")
    if clip is not None and text_entry is not None and facts is None:
        text_entry.store_facts({"logit_scale": clip.logit_scale})
    logit_scale = clip.logit_scale if clip is not None else float(facts["logit_scale"])
    if missing:
        _warn_overlong(clip, missing)
    text = encode_text(clip, flat, cache=text_entry, found=found)
    laps("text")
    if not images_cached and setup.engine == "ray":
        from .engines.ray import encode_images as encode_on_ray

        image = encode_on_ray(
            source,
            spec,
            clip.preprocess,
            batch_size=setup.batch_size or default_batch_size(spec.device),
            cache=image_entry,
            collect=setup.ray_collect,
            strict=setup.strict,
            compile=setup.compile,
            progress=setup.progress,
            address=setup.ray_address,
        )
    elif not images_cached:
        image = encode_images(
            clip,
            source,
            batch_size=setup.batch_size or default_batch_size(spec.device),
            workers=setup.workers,
            progress=setup.progress,
            cache=image_entry,
            compile=setup.compile,
            strict=setup.strict,
        )
    else:
        image = cached_images(image_entry)
    laps("images")
    if setup.strict and image.skipped:
        first, reason = next(iter(image.skipped.items()))
        raise ClipzsError(f"cannot read image {source.item_name(first)}: {reason} (strict)", parameter="strict")
    kept = np.setdiff1d(np.arange(len(source)), np.fromiter(image.skipped, dtype=np.int64, count=len(image.skipped)))
    if len(kept) == 0:
        raise ClipzsError(f"none of the {len(source)} images of {source.name}/{source.split} could be read")
    index = torch.from_numpy(kept)
    features = Features(
        image=image.features[index],
        text=text.features.view(len(prompts.prompts), len(names), -1),
        labels=torch.from_numpy(source.labels)[index],
        logit_scale=logit_scale,
    )
    _check_finite(features, spec)
    skipped = tuple(Skipped(i, source.item_name(i), reason) for i, reason in image.skipped.items())
    encoded = {"images": image.computed, "prompts": text.computed}
    note = getattr(image, "note", None)
    return Encoding(source, spec, prompts, names, features, kept, skipped, encoded, laps.seconds, clip, note)
