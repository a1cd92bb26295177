"""Template selection on labelled images: greedy forward selection and exhaustive best subset.

Pure functions of the scores of the images chosen on. Those images must not be the ones the chosen subset is
reported on; `pipeline.select` keeps the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fused
from .ensemble import (
    NEEDS,
    VOTE_METHODS,
    WEIGHTED_METHODS,
    Weights,
    accumulators,
    all_subsets,
    base_method,
    combine_sums,
    label_ranks,
    multipliers_of,
    vote_hits,
)
from .scoring import CACHE_BYTES, Scores, WeightFit, block_size, score_rows

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
    preds = _template_predictions(scores) if base in VOTE_METHODS else None
    steps = num_templates * (num_templates + 1) // 2  # candidates over all steps
    compiled = base == method and base not in VOTE_METHODS and fused.worth_it(steps * len(scores) * f.text.shape[1])
    state = {name: torch.empty(len(scores), f.text.shape[1]) for name in names}  # running sums of the chosen
    workspace = torch.empty(0)  # the kernel's softmax of a block, reused
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
            norms = None
            if base == "embedding":  # one candidate at a time: a [C, D] sum stays in the CPU's cache
                norms = torch.stack([(text_sum + f.text[t]).norm(dim=-1) for t in candidates])
            step = Step(base, weights, chosen, candidates, norms, preds, compiled, workspace)
            hits = step.hits(scores, state, totals)
        pick = int(torch.argmax(hits))  # the first maximum
        added = candidates[pick]
        chosen.append(added)
        text_sum = text_sum + f.text[added]
        totals = {k: v[added][None] + totals[k] if totals else v[added][None] for k, v in multipliers.items()}
        path.append((tuple(sorted(chosen)), (torch.tensor(float(hits[pick])) / len(labels)).item()))
    return path


def _template_predictions(scores: Scores) -> torch.Tensor:
    """Each template's prediction [N, T] for every image, from one pass over the scores."""
    return torch.cat([block.argmax(dim=2) for _, _, block in scores.blocks()])


def _addends(block: torch.Tensor, templates: torch.Tensor, names: frozenset[str], weights: Weights) -> dict:
    """Addends [B, k, C] of each accumulator for some templates [k] of a block of scores [B, T, C]: `ensemble.addends`
    in the block's own layout (through it, on a transposed view, the greedy step ran about 20 % slower)."""
    x = block.index_select(1, templates)
    found = {
        "logit": lambda: x,
        "prob": lambda: x.softmax(dim=2),
        "zpe": lambda: x * weights.zpe[templates][None, :, None],
        "carprt": lambda: x * weights.carprt[templates][None],
    }
    return {name: found[name]() for name in names}


def _weight_sums(multipliers: dict, index: torch.Tensor, totals: dict) -> dict[str, torch.Tensor]:
    """Each weighted accumulator's summed multipliers for the candidates `index`: theirs plus the chosen's `totals`
    (none before the first step)."""
    return {k: v[index] + totals[k] if totals else v[index] for k, v in multipliers.items()}


@dataclass(frozen=True)
class Step:
    """One step of greedy selection: the hits of `chosen` plus each candidate template, as `evaluate` scores them
    (`norms` [candidates, C] of the text sums for `embedding`, `preds` [N, T] per-template predictions for votes;
    `compiled`: a score method's candidates are ranked by `fused.candidate_hits`)."""

    method: str
    weights: Weights
    chosen: list[int]
    candidates: list[int]
    norms: torch.Tensor | None
    preds: torch.Tensor | None
    compiled: bool = False
    workspace: torch.Tensor | None = None  # kept from step to step by the caller (`fused._slots`)

    def hits(self, scores: Scores, state: dict[str, torch.Tensor], totals: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hits [len(candidates)]. First adds the last chosen template to the running sums `state` [N, C]; then
        takes the candidates a few at a time, so that their sums [k, B, C] stay in the CPU's cache."""
        f, names, chosen = scores.features, frozenset(state), self.chosen
        voting = self.method in VOTE_METHODS
        members = torch.tensor([sorted([*chosen, t]) for t in self.candidates]) if voting else None
        multipliers = multipliers_of(self.weights)
        hits = torch.zeros(len(self.candidates), dtype=torch.int64)
        if self.compiled:
            candidates = torch.tensor(self.candidates)
            weight_sums = _weight_sums(multipliers, candidates, totals).get(self.method)
            size, classes = len(chosen) + 1, f.text.shape[1]
            divisors = fused.divisors(self.method, size, len(candidates), classes, self.norms, weight_sums)
        size = block_size(scores.per_image)
        at_once = max(1, CACHE_BYTES // (4 * size * f.text.shape[1] * max(1, len(names))))
        for start, stop, block in scores.blocks(size):
            if chosen:  # the running sums gain the template chosen last
                last = _addends(block, torch.tensor(chosen[-1:]), names, self.weights)
                for name in names:
                    running = state[name][start:stop]
                    if len(chosen) == 1:
                        running.copy_(last[name][:, 0])
                    else:
                        running.add_(last[name][:, 0])
            labels = f.labels[start:stop]
            if self.compiled:
                running = state[NEEDS[self.method][0]][start:stop] if chosen else None
                hits += fused.candidate_hits(
                    block, labels, self.method, self.weights, running, candidates, divisors, self.workspace
                )
                continue
            for first in range(0, len(self.candidates), at_once):
                part = slice(first, first + at_once)
                index = torch.tensor(self.candidates[part])
                inputs = _addends(block, index, names, self.weights)
                sums = {k: (v + state[k][start:stop, None] if chosen else v).transpose(0, 1) for k, v in inputs.items()}
                if voting:
                    votes = self.preds[start:stop][:, members[part]].transpose(0, 1)  # [k, B, size]
                    hit = vote_hits(self.method, votes, labels, sums.get("prob"))
                else:
                    cand_totals = _weight_sums(multipliers, index, totals)
                    norms = None if self.norms is None else self.norms[part]
                    numerators, divisor = combine_sums(self.method, sums, cand_totals, len(chosen) + 1, norms)
                    hit = label_ranks(numerators, labels, divisor, ranked=False)[0]
                hits[part] += hit.sum(dim=1)
        return hits


def best_of_path(path: Path) -> tuple[tuple[int, ...], float]:
    """The most accurate subset along a greedy path, the earliest (smallest) on ties."""
    return max(path, key=lambda step: step[1])
