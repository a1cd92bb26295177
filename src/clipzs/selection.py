"""Template selection on labelled images: greedy forward selection and exhaustive best subset.

Pure functions of the scores of the images chosen on. Those images must not be the ones the chosen subset is
reported on; `pipeline.select` keeps the two apart.
"""

from __future__ import annotations

import torch

from .ensemble import (
    VOTE_METHODS,
    WEIGHTED_METHODS,
    Weights,
    accumulators,
    addends,
    all_subsets,
    base_method,
    combine_sums,
    label_ranks,
    multipliers_of,
    vote_hits,
)
from .scoring import Scores, WeightFit, block_size, score_rows

Path = list[tuple[tuple[int, ...], float]]


def _accuracy(hits: torch.Tensor, n: int) -> float:
    return (torch.tensor(float(hits)) / n).item()


def best_subset(method: str, scores: Scores) -> tuple[tuple[int, ...], float]:
    """The most accurate of every non-empty subset (up to 12 templates); on ties the first in `all_subsets`
    order, i.e. the smallest, then the lowest indices."""
    subsets = all_subsets(scores.features.text.shape[0])
    hits = score_rows(scores, [(method, s) for s in subsets], None, keep_pred=False).hits1
    best = int(torch.argmax(hits))  # the first maximum
    return subsets[best], _accuracy(hits[best], len(scores))


def greedy_forward(method: str, scores: Scores) -> Path:
    """Sequential forward selection, as in CLIP's prompt-engineering notebook: start from nothing and add the
    template that makes the most accurate ensemble (the lowest index on ties) until all are in. Returns the
    subset and its accuracy after each step.

    One pass over the images per step: each image keeps the running sums of the templates chosen so far, added
    in the order they were chosen, and every candidate adds its own template to them. (Sums in another order
    can differ in the last bit, so a near-tie can be decided differently than by `evaluate`, which adds in
    template order.) Label-free weights (zpe, carprt) are fitted once on all templates and renormalised over
    each candidate subset, as in `evaluate`; a balanced method rebalances each candidate over all the images.
    """
    f = scores.features
    num_templates, labels = f.text.shape[0], f.labels
    base = base_method(method)
    weights = Weights()
    if base in WEIGHTED_METHODS:
        fit = WeightFit(f, {base})
        for _, _, block in scores.blocks():
            fit.add(block)
        weights = fit.weights()
    names = accumulators({base})
    multipliers = multipliers_of(weights)
    state: dict[str, torch.Tensor] = {}  # running sums [N, C] of the chosen templates
    totals: dict[str, torch.Tensor] = {}  # their multipliers, [1, 1] or [1, C]
    text_sum = torch.zeros(f.text.shape[1:])
    chosen: list[int] = []
    path: Path = []
    while len(chosen) < num_templates:
        candidates = [t for t in range(num_templates) if t not in chosen]
        if base != method:
            subsets = [tuple(sorted([*chosen, t])) for t in candidates]
            hits = score_rows(scores, [(method, s) for s in subsets], None, keep_pred=False).hits1
        else:
            hits = _step(scores, base, names, weights, chosen, candidates, state, totals, text_sum)
        pick = int(torch.argmax(hits))  # the first maximum
        added = candidates[pick]
        chosen.append(added)
        text_sum = text_sum + f.text[added]
        totals = {k: v[added][None] + totals[k] if totals else v[added][None] for k, v in multipliers.items()}
        path.append((tuple(sorted(chosen)), (torch.tensor(float(hits[pick])) / len(labels)).item()))
    return path


def _step(scores, base, names, weights, chosen, candidates, state, totals, text_sum) -> torch.Tensor:
    """Hits [len(candidates)] of `chosen + t` for each candidate t; adds the last chosen template to `state`."""
    f = scores.features
    index = torch.tensor(candidates)
    norms = (text_sum + f.text[index]).norm(dim=-1) if base == "embedding" else None
    members = torch.tensor([sorted([*chosen, t]) for t in candidates])
    multipliers = multipliers_of(weights)
    cand_totals = {k: v[index] + totals[k] if totals else v[index] for k, v in multipliers.items()}
    hits = torch.zeros(len(candidates), dtype=torch.int64)
    c = f.text.shape[1]
    working = scores.per_image * (2 + len(names)) + len(candidates) * c * 4 * (len(names) + 4)
    for start, stop, block in scores.blocks(block_size(working)):
        per_template = block.transpose(0, 1).contiguous()  # [T, B, C]
        inputs = addends(per_template, names, weights)
        if chosen:
            for name in names:
                last = inputs[name][chosen[-1]]
                state[name][start:stop] = last if len(chosen) == 1 else state[name][start:stop] + last
        elif not state:
            state.update(
                {name: torch.empty(len(scores), *inputs[name].shape[2:], dtype=inputs[name].dtype) for name in names}
            )
        sums = {k: v[index] + state[k][start:stop] if chosen else v[index] for k, v in inputs.items() if k in names}
        labels = f.labels[start:stop]
        if base in VOTE_METHODS:
            hit = vote_hits(base, per_template.argmax(dim=2)[members].transpose(1, 2), labels, sums.get("prob"))
        else:
            numerators, divisor = combine_sums(base, sums, cand_totals, len(chosen) + 1, norms)
            hit = label_ranks(numerators, labels, divisor, ranked=False)[0]
        hits += hit.sum(dim=1)
    return hits


def best_of_path(path: Path) -> tuple[tuple[int, ...], float]:
    """The most accurate subset along a greedy path, the earliest (smallest) on ties."""
    return max(path, key=lambda step: step[1])
