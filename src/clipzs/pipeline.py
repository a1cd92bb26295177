"""`evaluate()`: dataset -> images -> features -> scores [N, T, C] -> ensembles -> metrics -> results dict."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from .cache import FeatureCache
from .datasets import ImageSet, classnames, load_dataset
from .encode import CHUNK, Features, encode_images, encode_prompts
from .ensemble import all_subsets, combine, parse_methods, scores
from .errors import ClipzsError
from .metrics import classification_metrics
from .models import ClipModel, load_model
from .preprocess import split_preprocess
from .prompts import load_templates


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 64


def summarize(
    features: Features, methods: Sequence[str], subsets: Sequence[tuple[int, ...]], num_classes: int
) -> tuple[list[dict], list[dict], dict]:
    """Metrics of every single template and of every (method, subset) ensemble, and the predictions [N] of
    the ensemble with the best top-1 (first on ties): pure tensor maths."""
    all_scores = scores(features.image, features.text, features.logit_scale)
    single = []
    for t in range(all_scores.shape[1]):
        logits = all_scores[:, t]
        single.append(classification_metrics(logits.argmax(dim=1), logits, features.labels, num_classes))
    ensembles, best = [], None
    for method in methods:
        for subset in subsets:
            result = combine(method, all_scores, features.text, subset)
            metrics = classification_metrics(result.pred, result.scores, features.labels, num_classes)
            ensembles.append({"method": method, "templates": list(subset), **metrics})
            if best is None or metrics["acc1"] > best["acc1"]:
                best = {
                    "method": method,
                    "templates": list(subset),
                    "acc1": metrics["acc1"],
                    "pred": result.pred.tolist(),
                }
    return single, ensembles, best


def feature_keys(clip: ClipModel, images: ImageSet) -> tuple[dict, dict]:
    """Cache keys: text features depend on the model and its numerics; image features also on the
    preprocessing and the exact images."""
    text = {
        "model": clip.name,
        "config": clip.config,
        "checkpoint": clip.checkpoint,
        "precision": clip.precision,
        "device": clip.device.type,
    }
    image = {
        **text,
        "preprocess": split_preprocess(clip.preprocess).description,
        "dataset": images.name,
        "split": images.split,
        "images": images.fingerprint(),
    }
    return text, image


def evaluate(
    dataset: str = "cifar100",
    data_root: str | Path | None = None,
    split: str = "test",
    model: str = "ViT-B/32",
    pretrained: str | None = None,
    cache_dir: str | Path | None = None,
    templates: str = "seed",
    classname_style: str = "clip",
    ensemble: str | Sequence[str] = "all",
    sweep: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    workers: int | None = None,
    limit: int | None = None,
    feature_cache: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict:
    """Run one zero-shot evaluation and return the results dict (the schema of `--out results.json`).

    Ensembles are taken over all templates, or over every non-empty subset with `sweep=True`. Image and
    text features come from the feature cache when it holds them (`feature_cache` folder, default
    `$CLIPZS_FEATURE_CACHE` or `~/.cache/clipzs/features`; `use_cache=False` bypasses it).
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 3)
        return now

    template_list = load_templates(templates)
    methods = parse_methods(ensemble)
    subsets = all_subsets(len(template_list)) if sweep else [tuple(range(len(template_list)))]
    images: ImageSet = load_dataset(dataset, data_root, split)
    if limit is not None:
        if limit < 1:
            raise ClipzsError(f"--limit must be at least 1, got {limit}")
        images = images.subset(range(min(limit, len(images))))
    if len(images) == 0:
        raise ClipzsError(f"{images.name}/{images.split} holds no images")
    names = classnames(images.classes, classname_style)
    t = lap("dataset", start)

    clip = load_model(model, pretrained, device=device, precision=precision, cache_dir=cache_dir)
    t = lap("load_model", t)
    cache = FeatureCache(feature_cache) if use_cache else None
    text_key, image_key = feature_keys(clip, images)
    text = encode_prompts(clip, template_list, names, cache=cache.texts(text_key) if cache else None)
    t = lap("text", t)
    image = encode_images(
        clip,
        images,
        batch_size=batch_size or default_batch_size(clip.device),
        workers=workers,
        progress=progress,
        cache=cache.images(image_key, len(images), CHUNK) if cache else None,
    )
    t = lap("images", t)

    features = Features(
        image=image.features, text=text.features, labels=torch.from_numpy(images.labels), logit_scale=clip.logit_scale
    )
    single, ensembles, best = summarize(features, methods, subsets, len(names))
    lap("ensembles", t)
    seconds["total"] = round(time.perf_counter() - start, 3)
    return {
        "clipzs_version": __version__,
        "dataset": images.name,
        "data_root": str(data_root) if data_root else None,
        "split": images.split,
        "limit": limit,
        "num_images": len(images),
        "model": clip.name,
        "pretrained": clip.pretrained,
        "checkpoint": clip.checkpoint,
        "precision": clip.precision,
        "device": str(clip.device),
        "templates": template_list,
        "classnames": classname_style,
        "classes": names,
        "methods": methods,
        "single": [{"template": tpl, **m} for tpl, m in zip(template_list, single, strict=True)],
        "ensembles": ensembles,
        "best": best,
        "labels": images.labels.tolist(),
        "encoded": {"images": image.computed, "prompts": text.computed},
        "seconds": seconds,
    }
