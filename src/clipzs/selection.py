"""Template selection on labelled images: greedy forward selection and exhaustive best subset.

Pure functions of scores [N, T, C], text features [T, C, D] and labels [N]. The images they see must not
be the ones the chosen subset is reported on; `pipeline.select` keeps the two apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .ensemble import all_subsets, combine


def subset_accuracy(
    method: str, scores: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, subset: Sequence[int]
) -> float:
    """Top-1 accuracy of `method` over the templates in `subset`."""
    return (combine(method, scores, text, subset).pred == labels).float().mean().item()


def greedy_forward(
    method: str, scores: torch.Tensor, text: torch.Tensor, labels: torch.Tensor
) -> list[tuple[tuple[int, ...], float]]:
    """Sequential forward selection, as in CLIP's prompt-engineering notebook: start from nothing and add
    the template that makes the most accurate ensemble (the lowest index on ties) until all are in.
    Returns the subset and its accuracy after each step."""
    chosen: list[int] = []
    remaining = list(range(scores.shape[1]))
    path = []
    while remaining:
        accuracy = {t: subset_accuracy(method, scores, text, labels, sorted([*chosen, t])) for t in remaining}
        pick = max(remaining, key=accuracy.get)
        chosen.append(pick)
        remaining.remove(pick)
        path.append((tuple(sorted(chosen)), accuracy[pick]))
    return path


def best_of_path(path: list[tuple[tuple[int, ...], float]]) -> tuple[tuple[int, ...], float]:
    """The most accurate subset along a greedy path, the earliest (smallest) on ties."""
    return max(path, key=lambda step: step[1])


def best_subset(
    method: str, scores: torch.Tensor, text: torch.Tensor, labels: torch.Tensor
) -> tuple[tuple[int, ...], float]:
    """The most accurate of every non-empty subset (up to 12 templates); on ties the first in `all_subsets`
    order, i.e. the smallest, then the lowest indices."""
    accuracy = {s: subset_accuracy(method, scores, text, labels, s) for s in all_subsets(scores.shape[1])}
    subset = max(accuracy, key=accuracy.get)
    return subset, accuracy[subset]
