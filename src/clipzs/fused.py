"""`ensemble.evaluate_block` and greedy selection's steps for work too large for torch to do at memory speed: the
score methods' ranks from compiled kernels (`kernels`, numba) that never write a subset's class scores to memory.

Through torch, every subset's sums [B, C] are written out by a matrix product and read back by each comparison
(about six passes per ensemble); a 12-template sweep is 28,665 ensembles, so that memory traffic was most of its
time. The kernels keep each image's sums in the CPU's cache instead, reuse the prefix a subset shares with the
previous one (subsets come in lexicographic order), and compare the quotients class by class, with the same
float32 arithmetic: sums added in template order (what `ensemble.subset_sums` computes), IEEE division by the same
divisors, no fast-math. Their hits, label ranks and predictions therefore equal torch's bit for bit, which the
tests check. Votes stay in torch, reading the few summed probabilities they need (`SubsetSums`).
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np
import torch

from .ensemble import (
    NEEDS,
    VOTE_METHODS,
    WEIGHTED_METHODS,
    BlockOutput,
    Plan,
    Weights,
    base_method,
    indicator,
    multipliers_of,
    vote_hits,
    vote_predictions,
)

MIN_ADDENDS = 1 << 31  # summed class scores from which the kernel pays for numba's import and load (about 0.4 s)
SLOTS = ("logit", "prob", "zpe", "carprt")  # the kernel's accumulator arguments, in this order


def _kernels() -> ModuleType:
    """The compiled kernels, imported (and numba with them) on first use."""
    return importlib.import_module(".kernels", __package__)


def _run(kernel: str, inputs: tuple, outputs: tuple, images: int) -> None:
    """A kernel over a block's images, split between torch's CPU threads (the kernels release the GIL)."""
    kernel = getattr(_kernels(), kernel)
    threads = max(1, min(torch.get_num_threads(), images // 16))
    bounds = [images * i // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:  # `result` raises here what a kernel raised
        ranges = zip(bounds[:-1], bounds[1:], strict=True)
        for done in [pool.submit(kernel, *inputs, lo, hi, *outputs) for lo, hi in ranges]:
            done.result()


class SubsetSums:
    """Summed addends at a few (subset, image, class) places, as `scores[m, b, classes]` indexes the sums
    [M, B, C] that `ensemble.subset_sums` would give (the same additions in template order), without them."""

    def __init__(self, x: torch.Tensor, members: torch.Tensor):
        self.x, self.members = x, members  # x [B, T, C] addends; members [M, size]

    def __getitem__(self, index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        m, b, classes = index  # [P, 1], [P, 1], [P, k]
        out = torch.empty(classes.shape)
        inputs = (self.x.numpy(), self.members.numpy(), m[:, 0].numpy(), b[:, 0].numpy(), classes.numpy())
        _run("subset_sums_at", inputs, (out.numpy(),), len(classes))
        return out


def _slots(scores: torch.Tensor, accumulators: frozenset[str], weights: Weights, workspace: torch.Tensor) -> tuple:
    """The kernel's addend arguments (the scores [B, T, C], their softmax, the zpe [T] and carprt [T, C] template
    weights) and which of SLOTS it sums, for a block of scores; what is not summed is a placeholder. The softmax
    is written into `workspace`, resized as needed: a caller that keeps it from block to block saves a fresh
    allocation per block, whose page faults cost more than the softmax itself (0.22 against 0.05 s for 2,048
    ImageNet images)."""
    t, c = scores.shape[1:]
    probs = torch.softmax(scores, 2, out=workspace.resize_(scores.shape)) if "prob" in accumulators else scores
    zpe = weights.zpe if weights.zpe is not None else torch.ones(t)
    carprt = weights.carprt if weights.carprt is not None else torch.ones(t, c)
    used = np.array([i for i, name in enumerate(SLOTS) if name in accumulators], dtype=np.int64)
    return scores.numpy(), probs.numpy(), zpe.numpy(), carprt.numpy(), used


def candidate_hits(
    block: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    weights: Weights,
    state: torch.Tensor | None,
    candidates: torch.Tensor,
    divisors: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hits [M] of greedy selection's candidates on a block of scores [B, T, C]: class scores (the addend of
    template candidates[m] + state [B, C], the running sums of the templates chosen so far, or the addend alone
    before the first) / divisors [M, C], for a score method (`workspace`: see `_slots`)."""
    workspace = torch.empty(0) if workspace is None else workspace
    hit1 = torch.empty(len(candidates), len(block), dtype=torch.bool)
    logit, prob, zpe, carprt, _ = _slots(block, frozenset(NEEDS[method]), weights, workspace)
    running = np.zeros((0, block.shape[2]), np.float32) if state is None else state.numpy()
    accumulator = SLOTS.index(NEEDS[method][0])
    inputs = (logit, prob, zpe, carprt, accumulator, running, candidates.numpy(), labels.numpy(), divisors.numpy())
    _run("candidate_hits", inputs, (hit1.numpy(),), len(block))
    return hit1.sum(dim=1)


def evaluate_block(
    scores: torch.Tensor,
    labels: torch.Tensor,
    plan: Plan,
    weights: Weights,
    want_pred: bool = False,
    workspace: torch.Tensor | None = None,
) -> BlockOutput:
    """`ensemble.evaluate_block` of one block of finite scores [B, T, C], computed as described above (`workspace`:
    see `_slots`)."""
    b, t, c = scores.shape
    workspace = torch.empty(0) if workspace is None else workspace
    slots = _slots(scores, plan.accumulators, weights, workspace)
    probs = torch.from_numpy(slots[1])
    multipliers = multipliers_of(weights)
    hit1 = torch.empty(len(plan.rows), b, dtype=torch.bool)
    above = torch.full((len(plan.rows), b), -1, dtype=torch.int64)
    pred = torch.empty(len(plan.rows), b, dtype=torch.int64) if want_pred else None
    voting = any(base_method(m) in VOTE_METHODS for m, _ in plan.rows)
    preds = weight_statistics(scores, None)[2].T if voting else None  # each template's argmax, [T, B]
    for level in plan.levels:
        members, size = level.members, level.members.shape[1]
        ranked = {m: r for m, r in level.requests.items() if base_method(m) not in VOTE_METHODS}
        if ranked:
            totals = {k: indicator(members, t) @ v for k, v in multipliers.items()}
            divided = torch.ones(len(ranked), len(members), c)
            rows_of = torch.full((len(ranked), len(members)), -1, dtype=torch.int64)
            acc_of = torch.empty(len(ranked), dtype=torch.int64)
            for j, (method, (ids, at)) in enumerate(ranked.items()):
                base = base_method(method)
                acc_of[j] = SLOTS.index(NEEDS[base][0])
                rows_of[j, at] = ids
                norms = plan.norms[ids] if base == "embedding" else None
                weight_sums = totals[base][at] if base in totals else None
                divided[j, at] = divisors(base, size, len(at), c, norms, weight_sums)
            inputs = (*slots, members.numpy(), labels.numpy(), acc_of.numpy(), divided.numpy(), rows_of.numpy())
            outputs = (hit1.numpy(), above.numpy(), (pred if want_pred else above).numpy(), want_pred)
            _run("rank_level", inputs, outputs, b)
        for method, (ids, at) in level.requests.items():
            if method in ranked:
                continue
            base = base_method(method)
            votes = preds[members[at]].transpose(1, 2)  # [R, B, size]
            prob = SubsetSums(probs, members[at]) if "prob" in NEEDS[base] else None
            hit1[ids] = vote_hits(base, votes, labels, prob)
            if want_pred:
                pred[ids] = vote_predictions(base, votes, prob)
    return BlockOutput(hit1, above, pred, {})


def weight_statistics(
    block: torch.Tensor, mu: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """`scoring.WeightFit`'s statistics of a block of scores [B, T, C], as torch computes them: the top of the
    scores minus the templates' mean scores mu [T, C] (ZPE; None without mu), and the top score and its class
    (CARPRT), each [B, T]."""
    b, t, c = block.shape
    corrected = torch.empty(b, t) if mu is not None else torch.empty(0, t)
    top, pred = torch.empty(b, t), torch.empty(b, t, dtype=torch.int64)
    means = mu.numpy() if mu is not None else np.zeros((0, c), np.float32)
    _run("weight_statistics", (block.numpy(), means), (corrected.numpy(), top.numpy(), pred.numpy()), b)
    return (corrected if mu is not None else None), top, pred


def worth_it(addends: int) -> bool:
    """Whether work that sums this many class scores (rows × templates × images × classes) goes through the
    kernel rather than torch."""
    return addends >= MIN_ADDENDS


def divisors(
    method: str,
    size: int,
    count: int,
    classes: int,
    norms: torch.Tensor | None = None,
    totals: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divisors [count, C] of `count` subsets' sums of `size` templates for a score method, as `combine_sums` divides:
    the subsets' text-sum norms [count, C] for embedding, their summed template weights (zpe [count, 1], carprt
    [count, C]) for the weighted methods, else the size (a mean)."""
    if method == "embedding":
        return norms
    if method in WEIGHTED_METHODS:
        return totals.expand(count, classes)
    return torch.full((count, classes), float(size))


__all__ = ["MIN_ADDENDS", "SubsetSums", "divisors", "candidate_hits", "evaluate_block", "weight_statistics", "worth_it"]
