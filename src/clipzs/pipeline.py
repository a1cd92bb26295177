"""The stages wired together: image source -> features (through the cache) -> scores by block -> typed results.

`evaluate` (single templates and ensembles), `select` (templates chosen on other labelled images), `compare`
(a paired test of two classifiers) and `encode` (fill the feature cache) are the library's commands; the CLI
maps its flags onto their parameters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from . import prompts as prompt_lib
from ._version import __version__
from .encoding import Encoding, encode, open_cache, prepare
from .ensemble import MAX_SWEEP_TEMPLATES, METHODS, SINGLE, all_subsets, parse_methods, ranks_method
from .errors import ClipzsError
from .metrics import Resamples, check_bootstrap, mcnemar
from .options import Setup
from .results import (
    Best,
    Bootstrap,
    Choice,
    CompareResult,
    Comparison,
    EvalResult,
    Row,
    Run,
    SelectionImages,
    SelectResult,
    Side,
    row_label,
)
from .scoring import Features, Scores, predictions, score_rows
from .selection import best_of_path, best_subset, greedy_forward
from .sources import open_source

RESAMPLES, BOOTSTRAP_SEED, LEVEL = 1000, 0, 0.95
KEPT_PREDICTIONS_BYTES = 256 << 20  # up to this, every row's predictions are kept rather than recomputed


def _run(setup: Setup, run: Encoding, seconds: dict[str, float], **options) -> Run:
    """The results header: what was evaluated, with what, and every option used."""
    notes = [n for n in (run.source.note, run.prompts.note, run.note) if n]
    return Run(
        dataset=run.source.name,
        split=run.source.split,
        num_images=len(run.kept),
        model=run.spec.name,
        pretrained=run.spec.pretrained,
        checkpoint=run.spec.checkpoint,
        precision=run.spec.precision,
        device=str(run.spec.device),
        templates=tuple(run.prompts.names),
        classnames=setup.classnames,
        classes=tuple(run.classes),
        options={**setup.record(), **options},
        data_root=None if setup.data_root is None else str(setup.data_root),
        note="; ".join(notes) or None,
        skipped=run.skipped,
        encoded=run.encoded,
        seconds={**run.seconds, **seconds},
        clipzs_version=__version__,
    )


def summarize(
    features: Features,
    methods: Sequence[str],
    subsets: Sequence[tuple[int, ...]],
    templates: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    block: int | None = None,
) -> tuple[tuple[Row, ...], tuple[Row, ...], Best | None, tuple[Comparison, ...], Bootstrap]:
    """Metrics of every single template and every (method, subset) ensemble, with paired bootstrap intervals,
    the best ensemble (first on ties) with its predictions, and an exact McNemar test of it against the best
    single template: pure tensor maths on the features, a block of images at a time."""
    scores = Scores(features, block=block)
    specs = [(SINGLE, (t,)) for t in range(len(templates))] + [(m, s) for m in methods for s in subsets]
    draws = Resamples(len(features.labels), resamples, seed)
    # scores that are not held cost a pass to recompute: then keep every row's predictions, if they are small
    keep_pred = scores.held is None and len(specs) * len(features.labels) * 8 <= KEPT_PREDICTIONS_BYTES
    tallies = score_rows(scores, specs, draws, keep_pred=keep_pred)
    n, c = len(features.labels), features.text.shape[1]
    counts = torch.bincount(features.labels, minlength=c).float()
    ci1 = draws.intervals(tallies.boot1, LEVEL).tolist()
    ci5 = draws.intervals(tallies.boot5, LEVEL).tolist()
    rows = []
    for i, (method, subset) in enumerate(specs):
        has5 = ranks_method(method) and c >= 5
        rows.append(
            Row(
                method=method,
                templates=subset,
                acc1=(torch.tensor(float(tallies.hits1[i])) / n).item(),
                acc5=(torch.tensor(float(tallies.hits5[i])) / n).item() if has5 else None,
                mean_per_class_recall=(tallies.per_class[i] / counts).nanmean().item(),
                acc1_ci=tuple(ci1[i]),
                acc5_ci=tuple(ci5[i]) if has5 else None,
                template=templates[subset[0]] if method is SINGLE else None,
            )
        )
    single, ensembles = tuple(rows[: len(templates)]), tuple(rows[len(templates) :])
    bootstrap = Bootstrap(resamples=resamples, seed=seed, level=LEVEL, rows="all")
    if not ensembles:
        return single, ensembles, None, (), bootstrap
    best_single = max(range(len(single)), key=lambda i: single[i].acc1)
    best = len(single) + max(range(len(ensembles)), key=lambda i: ensembles[i].acc1)
    pair = [best, best_single]
    pred = tallies.pred[pair] if keep_pred else predictions(scores, [specs[i] for i in pair])
    test = mcnemar(pred[0] == features.labels, pred[1] == features.labels)
    chosen = rows[best]
    comparison = Comparison(
        a=chosen.label,
        b=single[best_single].label,
        acc1_a=chosen.acc1,
        acc1_b=single[best_single].acc1,
        a_only=test["b"],
        b_only=test["c"],
        p_value=test["p_value"],
    )
    return (
        single,
        ensembles,
        Best(chosen.method, chosen.templates, chosen.acc1, tuple(pred[0].tolist())),
        (comparison,),
        bootstrap,
    )


def _setup(options: dict) -> Setup:
    unknown = sorted(set(options) - set(Setup.__dataclass_fields__))
    if unknown:
        raise ClipzsError(f"unknown option(s) {', '.join(unknown)}")
    return Setup(**options)


def _encoded(setup: Setup) -> tuple[Encoding, float]:
    start = time.perf_counter()
    source, spec = prepare(setup)
    return encode(setup, source, spec, cache=open_cache(setup)), time.perf_counter() - start


def template_count(setup: Setup) -> int | None:
    """How many template slots `setup` asks for, when that is known before any data is read (not for a
    webdataset's own templates)."""
    if setup.templates == prompt_lib.DATASET_TEMPLATES and setup.dataset == "wds":
        return None
    source = prompt_lib.read_prompts(setup.templates, setup.dataset)
    return len(source) if isinstance(source, list) else max(len(v) for v in source.values())


def evaluate(
    ensemble: str | Sequence[str] = "all",
    sweep: bool = False,
    balance: bool = False,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    **options,
) -> EvalResult:
    """Run one zero-shot evaluation and return its typed result (`results.to_json` gives the JSON).

    `options` are the fields of `options.Setup` (dataset, data_root, split, model, pretrained, templates, ...).
    Ensembles are taken over all templates, or over every non-empty subset with `sweep=True` (up to 12
    templates); `balance` adds each score method's class-balanced variant. Every accuracy has a paired
    percentile-bootstrap interval (`resamples` draws seeded with `seed`, recorded in the result).
    """
    start = time.perf_counter()
    setup = _setup(options)
    methods = parse_methods(ensemble, balance)
    check_bootstrap(resamples, seed)
    if sweep and template_count(setup) is not None:
        all_subsets(template_count(setup))  # refuse an impossible sweep before any work
    run, _ = _encoded(setup)
    slots = len(run.prompts.names)
    if sweep:
        all_subsets(slots)
    t = time.perf_counter()
    single, ensembles, best, comparisons, bootstrap = summarize(
        run.features,
        methods,
        all_subsets(slots) if sweep else [tuple(range(slots))],
        run.prompts.names,
        resamples,
        seed,
    )
    seconds = {"ensembles": round(time.perf_counter() - t, 3), "total": round(time.perf_counter() - start, 3)}
    header = _run(setup, run, seconds, ensemble=methods, sweep=sweep, balance=balance, resamples=resamples, seed=seed)
    return EvalResult(
        run=header,
        methods=tuple(methods),
        single=single,
        ensembles=ensembles,
        best=best,
        comparisons=comparisons,
        labels=tuple(run.features.labels.tolist()),
        bootstrap=bootstrap,
    )


def _accuracy(pred: torch.Tensor, labels: torch.Tensor, resamples: int, seed: int) -> tuple[float, tuple]:
    draws = Resamples(len(labels), resamples, seed)
    sums = draws.sums((pred == labels)[None], 0, len(labels))
    low, high = draws.intervals(sums, LEVEL)[0].tolist()
    return (torch.tensor(float((pred == labels).sum())) / len(labels)).item(), (low, high)


def select(
    ensemble: str | Sequence[str] = "embedding",
    select_split: str | None = None,
    select_size: int = 5000,
    seed: int = 0,
    resamples: int = RESAMPLES,
    **options,
) -> SelectResult:
    """Choose template subsets on labelled images disjoint from the evaluation images, then report the chosen
    subsets' accuracy on the evaluation images: an honest estimate, unlike the best subset of a sweep, which is
    chosen on the very images it is scored on (that one is reported too, as optimistic, when the evaluation
    scores fit in memory).

    The selection images are `select_size` images drawn (seeded) from `select_split` (default: `train` for
    datasets that have one besides the evaluation split, else the evaluation split, whose drawn images are then
    left out of the evaluation). Choosers: greedy forward selection (any number of templates) and exhaustive
    best subset (up to 12).
    """
    setup = _setup(options)
    methods = parse_methods(ensemble)
    check_bootstrap(resamples, seed)
    if select_size < 1:
        raise ClipzsError(f"select_size must be at least 1, got {select_size}", parameter="select_size")
    start = time.perf_counter()
    evaluation, spec = prepare(setup)
    pool_split = select_split or _selection_split(setup.dataset, evaluation.split)
    pool = evaluation if pool_split == evaluation.split else open_source(setup.dataset, setup.data_root, pool_split)
    if pool.classes != evaluation.classes:
        raise ClipzsError(f"split {pool_split} has other classes than {evaluation.split}", parameter="select_split")
    shared = pool is evaluation
    if shared and select_size >= len(pool):
        raise ClipzsError(
            f"select_size {select_size} leaves no evaluation images out of {len(pool)}", parameter="select_size"
        )
    picked = np.sort(np.random.default_rng(seed).permutation(len(pool))[: min(select_size, len(pool))])
    cache = open_cache(setup)
    if shared:  # one encoding of the split, divided by index
        whole = encode(setup, evaluation, spec, cache=cache)
        chooser, run = _divide(whole, picked)
    else:
        chooser = encode(replace(setup, split=pool_split, limit=None), pool.subset(picked), spec, cache=cache)
        run = encode(setup, evaluation, spec, clip=chooser.clip, cache=cache)
    t = time.perf_counter()
    chosen_scores, test_scores = Scores(chooser.features), Scores(run.features)
    slots = len(run.prompts.names)
    labels = run.features.labels

    def on_test(method: str, subsets: list[tuple[int, ...]]) -> list[tuple[float, tuple]]:
        pred = predictions(test_scores, [(method, s) for s in subsets])
        return [_accuracy(p, labels, resamples, seed) for p in pred]

    rows = []
    for method in methods:
        path = greedy_forward(method, chosen_scores)
        greedy, greedy_acc = best_of_path(path)
        candidates = [tuple(range(slots)), greedy]
        exhaustive = best_subset(method, chosen_scores) if slots <= MAX_SWEEP_TEMPLATES else None
        if exhaustive:
            candidates.append(exhaustive[0])
        if test_scores.held is not None:
            optimistic = (
                best_subset(method, test_scores)
                if slots <= MAX_SWEEP_TEMPLATES
                else best_of_path(greedy_forward(method, test_scores))
            )[0]
            candidates.append(optimistic)
        measured = on_test(method, candidates)
        choice = {
            "all_templates": Choice(candidates[0], *measured[0]),
            "greedy": Choice(greedy, *measured[1], selection_acc1=greedy_acc, path=tuple(path)),
        }
        if exhaustive:
            choice["best_subset"] = Choice(exhaustive[0], *measured[2], selection_acc1=exhaustive[1])
        note = None
        if test_scores.held is not None:
            choice["test_set_best"] = Choice(candidates[-1], *measured[-1], optimistic=True)
        else:
            note = "test-set best not computed: the evaluation images' scores are too large to hold"
        rows.append(_selection(method, choice, note))
    seconds = {"select": round(time.perf_counter() - t, 3), "total": round(time.perf_counter() - start, 3)}
    header = _run(
        setup,
        run,
        seconds,
        ensemble=methods,
        select_split=pool_split,
        select_size=select_size,
        seed=seed,
        resamples=resamples,
    )
    header = replace(
        header, encoded={k: chooser.encoded[k] + run.encoded[k] for k in run.encoded} if not shared else run.encoded
    )
    return SelectResult(
        run=header,
        selection=SelectionImages(
            pool_split,
            len(chooser.kept),
            seed,
            tuple(picked[chooser.kept].tolist()) if not shared else tuple(chooser.kept.tolist()),
        ),
        evaluation_indices=tuple(run.kept.tolist()),
        methods=tuple(rows),
    )


def _selection(method: str, choice: dict, note: str | None):
    from .results import Selection

    return Selection(method=method, note=note, **choice)


def _selection_split(dataset: str, split: str) -> str:
    """`train` when the dataset has one besides `split` (CIFAR's 50,000 images), else `split` itself."""
    from .catalogue import find

    info = find(dataset)
    return "train" if info is not None and "train" in info.splits and split != "train" else split


def _divide(whole: Encoding, picked: np.ndarray) -> tuple[Encoding, Encoding]:
    """The chooser images (`picked`, indices into the source) and the rest, from one encoding."""
    chosen = np.isin(whole.kept, picked)
    parts = []
    for mask in (chosen, ~chosen):
        index = torch.from_numpy(np.flatnonzero(mask))
        parts.append(replace(whole, features=whole.features.subset(index), kept=whole.kept[mask]))
    return parts[0], parts[1]


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
        try:
            one = parse_methods(method) == [method]
        except ClipzsError as e:
            raise ClipzsError(f"cannot read {spec!r}: {str(e).removeprefix('ensemble: ')}") from e
        if not one:
            raise ClipzsError(f"cannot read {spec!r}: name one method ({', '.join(METHODS)}), not {method!r}")
    return method, subset


def check_specs(specs: Sequence[str], setup: Setup) -> None:
    """Refuse unreadable `compare` specs before any work (template numbers need the template count)."""
    count = template_count(setup)
    for spec in specs:
        parse_spec(spec, count if count is not None else 10**6)


def compare(a: str, b: str, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, **options) -> CompareResult:
    """Exact McNemar test between two methods or template subsets on the same images (see `parse_spec`)."""
    setup = _setup(options)
    check_specs([a, b], setup)
    check_bootstrap(resamples, seed)
    run, _ = _encoded(setup)
    slots, labels = len(run.prompts.names), run.features.labels
    parsed = [parse_spec(spec, slots) for spec in (a, b)]
    pred = predictions(Scores(run.features), [(m, s) for m, s in parsed])
    sides = [
        Side(spec, row_label(m, s), *_accuracy(p, labels, resamples, seed))
        for spec, (m, s), p in zip((a, b), parsed, pred, strict=True)
    ]
    test = mcnemar(pred[0] == labels, pred[1] == labels)
    return CompareResult(
        run=_run(setup, run, {}, a=a, b=b, resamples=resamples, seed=seed),
        a=sides[0],
        b=sides[1],
        a_only=test["b"],
        b_only=test["c"],
        p_value=test["p_value"],
    )


def encode_only(**options) -> Encoding:
    """Fill the feature cache for a dataset and model, without scoring (a cluster precomputes, a laptop scores)."""
    setup = _setup(options)
    if not setup.use_cache:
        raise ClipzsError("encode fills the feature cache: it cannot run with use_cache=False", parameter="use_cache")
    run, _ = _encoded(setup)
    return run
