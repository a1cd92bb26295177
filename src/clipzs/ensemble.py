"""Prompt ensembles over any subset of templates, as pure functions of the scores tensor.

scores [N, T, C] = logit_scale * cos(image n, prompt of template t for class c). Every method reads
only the templates in the subset it is given, so a whole sweep costs no second pass over the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from .errors import ClipzsError
from .weighting import balance_classes, carprt, zpe

METHODS = ("vote-seed", "vote", "prob", "logit", "embedding", "zpe", "carprt")
VOTE_METHODS = frozenset({"vote-seed", "vote"})
BALANCED = "+balanced"  # suffix: a score method's probabilities rebalanced to a uniform class marginal
MAX_SWEEP_TEMPLATES = 12


@dataclass(frozen=True)
class Ensemble:
    """One method applied to one template subset: predictions [N] and, unless it votes, class scores [N, C]."""

    method: str
    templates: tuple[int, ...]
    pred: torch.Tensor
    scores: torch.Tensor | None


def scores(image: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """[N, T, C] logits from unit-norm image features [N, D] and text features [T, C, D]."""
    assert image.ndim == 2 and text.ndim == 3 and image.shape[1] == text.shape[2], (image.shape, text.shape)
    return logit_scale * torch.einsum("nd,tcd->ntc", image, text)


def vote_seed(preds: torch.Tensor) -> torch.Tensor:
    """The original experiment's rule, `max(set(p), key=p.count)`, over each row of preds [N, S].

    Where one class has the most votes that is the answer whatever the order; only rows with a tie are
    evaluated by the rule itself in Python, because ties go to whichever tied class CPython's set
    iteration meets first, and that is the behaviour being reproduced.
    """
    counts = torch.zeros(preds.shape[0], int(preds.max()) + 1, dtype=torch.int64)
    counts.scatter_add_(1, preds, torch.ones_like(preds))
    result = counts.argmax(dim=1)
    tied = ((counts == counts.max(dim=1, keepdim=True).values).sum(dim=1) > 1).nonzero().flatten()
    for i, p in zip(tied.tolist(), preds[tied].tolist(), strict=True):
        result[i] = max(set(p), key=p.count)
    return result


def vote(logits: torch.Tensor) -> torch.Tensor:
    """Majority vote of per-template argmaxes over logits [N, S, C]; a tie goes to the tied class with
    the highest summed softmax probability (then the lowest index)."""
    n, _, c = logits.shape
    preds = logits.argmax(dim=2)
    counts = torch.zeros(n, c, dtype=torch.int64).scatter_add_(1, preds, torch.ones_like(preds))
    prob_sum = logits.softmax(dim=2).sum(dim=1)
    tied = counts == counts.max(dim=1, keepdim=True).values
    return prob_sum.masked_fill(~tied, -torch.inf).argmax(dim=1)


def prob_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean over templates of the softmax probabilities: [N, S, C] -> [N, C]."""
    return logits.softmax(dim=2).mean(dim=1)


def logit_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean over templates of the logits: [N, S, C] -> [N, C]."""
    return logits.mean(dim=1)


def embedding_mean(logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP paper's ensemble: logits against the renormalised mean text embedding of each class.

    With unit-norm features, scale * <x, normalize(sum_t w_tc)> = sum_t logits[:, t, c] / ||sum_t w_tc||,
    so it is computed from the subset's logits [N, S, C] and text features [S, C, D] without the images.
    """
    return logits.sum(dim=1) / text.sum(dim=0).norm(dim=-1)


def _class_scores(method: str, logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """[N, C] scores of a score-based method from the subset's logits [N, S, C] and text [S, C, D]."""
    if method == "prob":
        return prob_mean(logits)
    if method == "logit":
        return logit_mean(logits)
    if method == "embedding":
        return embedding_mean(logits, text)
    if method == "zpe":
        return zpe(logits)
    if method == "carprt":
        return carprt(logits)
    raise ClipzsError(f"unknown ensemble method {method!r}: use one of {', '.join(METHODS)}")


def combine(method: str, all_scores: torch.Tensor, text: torch.Tensor | None, subset: Sequence[int]) -> Ensemble:
    """Apply `method` to the templates in `subset` of scores [N, T, C] (text [T, C, D] for `embedding`).

    `<method>+balanced` rebalances a score method's class probabilities to a uniform marginal over the
    images, without labels (`weighting.balance_classes`).
    """
    index = torch.as_tensor(list(subset), dtype=torch.int64)
    logits = all_scores.index_select(1, index)
    if method == "vote-seed":
        return Ensemble(method, tuple(subset), vote_seed(logits.argmax(dim=2)), None)
    if method == "vote":
        return Ensemble(method, tuple(subset), vote(logits), None)
    base = method.removesuffix(BALANCED)
    combined = _class_scores(base, logits, None if text is None else text.index_select(0, index))
    if base != method:
        combined = balance_classes(combined if base == "prob" else combined.softmax(dim=1))
    return Ensemble(method, tuple(subset), combined.argmax(dim=1), combined)


def parse_methods(spec: str | Sequence[str], balance: bool = False) -> list[str]:
    """`all` or a comma list of method names (`<score method>+balanced` too), checked; `balance` adds the
    balanced variant of every score method chosen."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        names = list(METHODS)
    valid = {*METHODS, *(m + BALANCED for m in METHODS if m not in VOTE_METHODS)}
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ClipzsError(
            f"unknown ensemble method(s) {', '.join(unknown) or '(none)'}: use 'all' or a comma list of "
            f"{', '.join(METHODS)} (score methods also as <method>{BALANCED})"
        )
    if balance:
        names += [n + BALANCED for n in names if n in METHODS and n not in VOTE_METHODS and n + BALANCED not in names]
    return list(dict.fromkeys(names))


def all_subsets(num_templates: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of template indices, by size, then in lexicographic order."""
    if num_templates > MAX_SWEEP_TEMPLATES:
        raise ClipzsError(
            f"--sweep over {num_templates} templates would be {2**num_templates - 1} subsets; "
            f"it is limited to {MAX_SWEEP_TEMPLATES} templates"
        )
    return [s for k in range(1, num_templates + 1) for s in combinations(range(num_templates), k)]
