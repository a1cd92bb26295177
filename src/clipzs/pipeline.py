"""`evaluate()`: dataset -> images -> features -> scores [N, T, C] -> ensembles -> metrics -> results dict."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from .cache import FeatureCache
from .datasets import ImageSet, classnames, load_dataset
from .encode import CHUNK, Features, encode_images, encode_prompt_matrix
from .ensemble import all_subsets, combine, parse_methods, scores
from .errors import ClipzsError
from .metrics import bootstrap_cis, classification_metrics, mcnemar
from .models import ClipModel, load_model
from .preprocess import split_preprocess
from .prompts import prompt_set, read_prompts


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 64


def label(method: str | None, templates: Sequence[int]) -> str:
    """A row's name: `template 3` for a single template, `embedding{1,3,4}` for an ensemble (1-based)."""
    numbers = ",".join(str(t + 1) for t in templates)
    return f"template {numbers}" if method is None else f"{method}{{{numbers}}}"


def summarize(
    features: Features,
    methods: Sequence[str],
    subsets: Sequence[tuple[int, ...]],
    templates: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of every single template and every (method, subset) ensemble, with 95% bootstrap intervals
    (seeded, the same resamples for every row), the predictions [N] of the best ensemble by top-1 (first on
    ties), and an exact McNemar test of that ensemble against the best single template: pure tensor maths."""
    all_scores = scores(features.image, features.text, features.logit_scale)
    labels, num_classes = features.labels, all_scores.shape[2]
    rows: list[dict] = []
    hits1: list[torch.Tensor] = []
    hits5: dict[int, torch.Tensor] = {}

    def record(row: dict, pred: torch.Tensor, class_scores: torch.Tensor | None) -> None:
        row.update(classification_metrics(pred, class_scores, labels, num_classes))
        hits1.append(pred == labels)
        if row["acc5"] is not None:
            hits5[len(rows)] = (class_scores.topk(5, dim=1).indices == labels[:, None]).any(dim=1)
        rows.append(row)

    for t, template in enumerate(templates):
        record({"template": template}, all_scores[:, t].argmax(dim=1), all_scores[:, t])
    predictions = {}
    for method in methods:
        for subset in subsets:
            result = combine(method, all_scores, features.text, subset)
            predictions[len(rows)] = result.pred
            record({"method": method, "templates": list(subset)}, result.pred, result.scores)

    for row, (low, high) in zip(rows, bootstrap_cis(torch.stack(hits1, dim=1), n_boot, seed).tolist(), strict=True):
        row["acc1_ci"] = [low, high]
    if hits5:
        cis5 = bootstrap_cis(torch.stack(list(hits5.values()), 1), n_boot, seed).tolist()
        for i, (low, high) in zip(hits5, cis5, strict=True):
            rows[i]["acc5_ci"] = [low, high]

    single, ensembles = rows[: len(templates)], rows[len(templates) :]
    best_single = max(range(len(single)), key=lambda i: single[i]["acc1"])
    best = max(predictions, key=lambda i: rows[i]["acc1"]) if predictions else None
    summary = {"single": single, "ensembles": ensembles, "best": None, "comparisons": []}
    if best is not None:
        summary["best"] = {
            **{k: rows[best][k] for k in ("method", "templates", "acc1")},
            "pred": predictions[best].tolist(),
        }
        test = mcnemar(hits1[best], hits1[best_single])
        summary["comparisons"].append(
            {
                "a": label(rows[best]["method"], rows[best]["templates"]),
                "b": label(None, [best_single]),
                "acc1_a": rows[best]["acc1"],
                "acc1_b": single[best_single]["acc1"],
                "a_only": test["b"],
                "b_only": test["c"],
                "p_value": test["p_value"],
            }
        )
    return summary


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
    balance: bool = False,
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

    `templates` is a built-in set, a template file, or a `.json` of class-specific sentences. Ensembles are
    taken over all templates, or over every non-empty subset with `sweep=True`; `balance` adds each score
    method's class-balanced variant. Image and
    text features come from the feature cache when it holds them (`feature_cache` folder, default
    `$CLIPZS_FEATURE_CACHE` or `~/.cache/clipzs/features`; `use_cache=False` bypasses it).
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 3)
        return now

    source = read_prompts(templates)
    methods = parse_methods(ensemble, balance)
    if sweep and isinstance(source, list):
        all_subsets(len(source))  # refuse an impossible sweep before any work
    images: ImageSet = load_dataset(dataset, data_root, split)
    if limit is not None:
        if limit < 1:
            raise ClipzsError(f"--limit must be at least 1, got {limit}")
        images = images.subset(range(min(limit, len(images))))
    if len(images) == 0:
        raise ClipzsError(f"{images.name}/{images.split} holds no images")
    names = classnames(images.classes, classname_style)
    prompts = prompt_set(source, names)
    slots = len(prompts.names)
    subsets = all_subsets(slots) if sweep else [tuple(range(slots))]
    t = lap("dataset", start)

    clip = load_model(model, pretrained, device=device, precision=precision, cache_dir=cache_dir)
    t = lap("load_model", t)
    cache = FeatureCache(feature_cache) if use_cache else None
    text_key, image_key = feature_keys(clip, images)
    text = encode_prompt_matrix(clip, prompts.prompts, cache=cache.texts(text_key) if cache else None)
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
    summary = summarize(features, methods, subsets, prompts.names)
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
        "templates": prompts.names,
        "prompts": templates,
        "classnames": classname_style,
        "classes": names,
        "methods": methods,
        **summary,
        "labels": images.labels.tolist(),
        "encoded": {"images": image.computed, "prompts": text.computed},
        "seconds": seconds,
    }
