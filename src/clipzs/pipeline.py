"""The stages wired together: dataset -> images -> features -> scores [N, T, C] -> ensembles -> metrics.

`evaluate` (single templates and ensembles), `select` (templates chosen on other labelled images) and
`compare` (a paired test of two ensembles) each return a dict, the JSON the CLI writes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .cache import FeatureCache
from .datasets import CIFAR, ImageSet, classnames, load_dataset
from .encode import CHUNK, Features, encode_images, encode_prompt_matrix
from .ensemble import MAX_SWEEP_TEMPLATES, all_subsets, combine, parse_methods, scores
from .errors import ClipzsError
from .metrics import bootstrap_cis, mcnemar, mean_per_class_recall, topk_hits
from .models import ClipModel, load_model
from .preprocess import split_preprocess
from .prompts import PromptSet, prompt_set, read_prompts
from .selection import best_of_path, best_subset, greedy_forward


def default_batch_size(device: torch.device) -> int:
    """256 on CUDA; 32 on CPU, the fastest measured for ViT-B/32 on 2 cores (docs/benchmarks.md)."""
    return 256 if device.type == "cuda" else 32


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
        hit1, hit5 = pred == labels, topk_hits(class_scores, labels, 5)
        row["acc1"] = hit1.float().mean().item()
        row["acc5"] = None if hit5 is None else hit5.float().mean().item()
        row["mean_per_class_recall"] = mean_per_class_recall(pred, labels, num_classes)
        hits1.append(hit1)
        if hit5 is not None:
            hits5[len(rows)] = hit5
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


@dataclass(frozen=True)
class Setup:
    """What to encode: data, model and prompts, and how (the options `eval`, `select` and `compare` share)."""

    dataset: str = "cifar100"
    data_root: str | Path | None = None
    split: str = "test"
    model: str = "ViT-B/32"
    pretrained: str | None = None
    cache_dir: str | Path | None = None
    templates: str = "seed"
    classname_style: str = "clip"
    batch_size: int | None = None
    device: str | None = None
    precision: str | None = None
    workers: int | None = None
    limit: int | None = None
    feature_cache: str | Path | None = None
    use_cache: bool = True
    progress: bool = True
    compile: bool = False


@dataclass(frozen=True)
class Encoding:
    """One pass over a set of images and the prompts: what every later stage reads."""

    images: ImageSet
    clip: ClipModel
    prompts: PromptSet
    classes: list[str]
    features: Features
    encoded: dict[str, int]
    seconds: dict[str, float]


def load_images(setup: Setup) -> ImageSet:
    """The dataset split of `setup` (its first `limit` images), checked to be non-empty."""
    images = load_dataset(setup.dataset, setup.data_root, setup.split)
    if setup.limit is not None:
        if setup.limit < 1:
            raise ClipzsError(f"--limit must be at least 1, got {setup.limit}")
        images = images.subset(range(min(setup.limit, len(images))))
    if len(images) == 0:
        raise ClipzsError(f"{images.name}/{images.split} holds no images")
    return images


def encode(setup: Setup, images: ImageSet, clip: ClipModel | None = None) -> Encoding:
    """Image and text features of `images` under `setup`, through the feature cache unless it is off."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    names = classnames(images.classes, setup.classname_style)
    prompts = prompt_set(read_prompts(setup.templates), names)
    if clip is None:
        clip = load_model(setup.model, setup.pretrained, setup.device, setup.precision, setup.cache_dir)
        lap("load_model")
    cache = FeatureCache(setup.feature_cache) if setup.use_cache else None
    text_key, image_key = feature_keys(clip, images)
    text = encode_prompt_matrix(clip, prompts.prompts, cache=cache.texts(text_key) if cache else None)
    lap("text")
    image = encode_images(
        clip,
        images,
        batch_size=setup.batch_size or default_batch_size(clip.device),
        workers=setup.workers,
        progress=setup.progress,
        cache=cache.images(image_key, len(images), CHUNK) if cache else None,
        compile=setup.compile,
    )
    lap("images")
    labels = torch.from_numpy(images.labels)
    features = Features(image=image.features, text=text.features, labels=labels, logit_scale=clip.logit_scale)
    encoded = {"images": image.computed, "prompts": text.computed}
    return Encoding(images, clip, prompts, names, features, encoded, seconds)


def describe(setup: Setup, run: Encoding) -> dict:
    """The part of a results dict that says what was evaluated."""
    return {
        "clipzs_version": __version__,
        "dataset": run.images.name,
        "data_root": str(setup.data_root) if setup.data_root else None,
        "split": run.images.split,
        "limit": setup.limit,
        "num_images": len(run.images),
        "model": run.clip.name,
        "pretrained": run.clip.pretrained,
        "checkpoint": run.clip.checkpoint,
        "precision": run.clip.precision,
        "device": str(run.clip.device),
        "templates": run.prompts.names,
        "prompts": setup.templates,
        "classnames": setup.classname_style,
        "classes": run.classes,
    }


def evaluate(ensemble: str | Sequence[str] = "all", sweep: bool = False, balance: bool = False, **options) -> dict:
    """Run one zero-shot evaluation and return the results dict (the schema of `--out results.json`).

    `options` are the fields of `Setup` (dataset, data_root, split, model, pretrained, templates, ...).
    `templates` is a built-in set, a template file, or a `.json` of class-specific sentences. Ensembles are
    taken over all templates, or over every non-empty subset with `sweep=True`; `balance` adds each score
    method's class-balanced variant. Image and text features come from the feature cache when it holds
    them (`feature_cache` folder, default `$CLIPZS_FEATURE_CACHE` or `~/.cache/clipzs/features`;
    `use_cache=False` bypasses it).
    """
    start = time.perf_counter()
    setup = Setup(**options)
    source = read_prompts(setup.templates)
    methods = parse_methods(ensemble, balance)
    if sweep and isinstance(source, list):
        all_subsets(len(source))  # refuse an impossible sweep before any work
    images = load_images(setup)
    seconds = {"dataset": round(time.perf_counter() - start, 3)}
    run = encode(setup, images)
    slots = len(run.prompts.names)
    t = time.perf_counter()
    summary = summarize(
        run.features, methods, all_subsets(slots) if sweep else [tuple(range(slots))], run.prompts.names
    )
    seconds.update(run.seconds, ensembles=round(time.perf_counter() - t, 3))
    seconds["total"] = round(time.perf_counter() - start, 3)
    return {
        **describe(setup, run),
        "methods": methods,
        **summary,
        "labels": images.labels.tolist(),
        "encoded": run.encoded,
        "seconds": seconds,
    }


def _accuracy_with_ci(pred: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    correct = pred == labels
    low, high = bootstrap_cis(correct[:, None], seed=seed)[0].tolist()
    return {"acc1": correct.float().mean().item(), "acc1_ci": [low, high]}


def split_for_selection(
    setup: Setup, select_split: str | None, select_size: int, seed: int
) -> tuple[ImageSet, np.ndarray, ImageSet, np.ndarray]:
    """Labelled images to choose templates on and the evaluation images, never sharing an image.

    The selection images are `select_size` images drawn (seeded) from `select_split` (default: `train` for
    CIFAR, else the evaluation split). When that is the evaluation split itself, the drawn images are
    removed from the evaluation set. Returns each set with its indices into its split.
    """
    if select_size < 1:
        raise ClipzsError(f"--select-size must be at least 1, got {select_size}")
    evaluation = load_images(setup)
    pool_split = select_split or ("train" if setup.dataset in CIFAR else setup.split)
    pool = evaluation if pool_split == evaluation.split else load_dataset(setup.dataset, setup.data_root, pool_split)
    if pool.classes != evaluation.classes:
        raise ClipzsError(f"split {pool_split} has other classes than {evaluation.split}")
    shared = pool is evaluation
    if shared and select_size >= len(pool):
        raise ClipzsError(f"--select-size {select_size} leaves no evaluation images out of {len(pool)}")
    picked = np.sort(np.random.default_rng(seed).permutation(len(pool))[: min(select_size, len(pool))])
    kept = np.setdiff1d(np.arange(len(evaluation)), picked) if shared else np.arange(len(evaluation))
    return pool.subset(picked), picked, evaluation.subset(kept), kept


def select(
    ensemble: str | Sequence[str] = "embedding",
    select_split: str | None = None,
    select_size: int = 5000,
    seed: int = 0,
    **options,
) -> dict:
    """Choose template subsets on labelled images disjoint from the evaluation images, then report the
    chosen subsets' accuracy on the evaluation images: an honest estimate, unlike the best subset of a
    sweep, which is chosen on the very images it is scored on (that one is reported too, as optimistic).

    Choosers: greedy forward selection (any number of templates) and exhaustive best subset (up to 12).
    """
    setup = Setup(**options)
    methods = parse_methods(ensemble)
    chooser_images, chooser_index, evaluation, evaluation_index = split_for_selection(
        setup, select_split, select_size, seed
    )
    chooser = encode(setup, chooser_images)
    run = encode(setup, evaluation, clip=chooser.clip)
    chosen_scores = scores(chooser.features.image, chooser.features.text, chooser.features.logit_scale)
    test_scores = scores(run.features.image, run.features.text, run.features.logit_scale)
    text, labels, slots = run.features.text, run.features.labels, len(run.prompts.names)

    def on_test(method: str, subset: Sequence[int]) -> dict:
        return {"templates": list(subset), **_accuracy_with_ci(combine(method, test_scores, text, subset).pred, labels)}

    rows = []
    for method in methods:
        path = greedy_forward(method, chosen_scores, text, chooser.features.labels)
        greedy, greedy_acc = best_of_path(path)
        row = {
            "method": method,
            "all_templates": on_test(method, range(slots)),
            "greedy": {
                **on_test(method, greedy),
                "selection_acc1": greedy_acc,
                "path": [{"templates": list(s), "selection_acc1": a} for s, a in path],
            },
        }
        if slots <= MAX_SWEEP_TEMPLATES:
            subset, subset_acc = best_subset(method, chosen_scores, text, chooser.features.labels)
            row["best_subset"] = {**on_test(method, subset), "selection_acc1": subset_acc}
            optimistic, _ = best_subset(method, test_scores, text, labels)
        else:
            optimistic, _ = best_of_path(greedy_forward(method, test_scores, text, labels))
        row["test_set_best"] = {**on_test(method, optimistic), "optimistic": True}
        rows.append(row)
    return {
        **describe(setup, run),
        "selection": {
            "split": chooser_images.split,
            "num_images": len(chooser_images),
            "seed": seed,
            "indices": chooser_index.tolist(),
        },
        "evaluation_indices": evaluation_index.tolist(),
        "methods": rows,
        "encoded": {k: chooser.encoded[k] + run.encoded[k] for k in run.encoded},
    }


def parse_spec(spec: str, num_templates: int) -> tuple[str | None, tuple[int, ...]]:
    """`METHOD`, `METHOD:1+3+4` (1-based templates; all when omitted) or `template:3` / `3` for one template.
    Returns (method, or None for a single template; 0-based subset)."""
    head, colon, numbers = spec.partition(":")
    if not colon:
        head, numbers = ("template", spec) if spec.isdigit() else (spec, "")
    method = None if head == "template" else head
    try:
        subset = tuple(sorted({int(n) - 1 for n in numbers.split("+")})) if numbers else tuple(range(num_templates))
    except ValueError:
        subset = ()
    if not subset or not all(0 <= t < num_templates for t in subset) or (method is None and len(subset) != 1):
        raise ClipzsError(f"cannot read {spec!r}: use METHOD, METHOD:1+3 or template:N, templates 1..{num_templates}")
    if method is not None:
        parse_methods(method)
    return method, subset


def compare(a: str, b: str, **options) -> dict:
    """Exact McNemar test between two methods or template subsets on the same images (see `parse_spec`)."""
    setup = Setup(**options)
    run = encode(setup, load_images(setup))
    all_scores = scores(run.features.image, run.features.text, run.features.logit_scale)
    labels, slots = run.features.labels, len(run.prompts.names)
    sides = {}
    for name, spec in (("a", a), ("b", b)):
        method, subset = parse_spec(spec, slots)
        pred = (
            all_scores[:, subset[0]].argmax(1)
            if method is None
            else combine(method, all_scores, run.features.text, subset).pred
        )
        sides[name] = {"spec": spec, "label": label(method, subset), "pred": pred, **_accuracy_with_ci(pred, labels)}
    test = mcnemar(sides["a"].pop("pred") == labels, sides["b"].pop("pred") == labels)
    return {
        **describe(setup, run),
        "a": sides["a"],
        "b": sides["b"],
        "a_only": test["b"],
        "b_only": test["c"],
        "p_value": test["p_value"],
        "encoded": run.encoded,
    }
