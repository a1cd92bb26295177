"""Scores [N, T, C] a block of images at a time, and every row's metrics from them.

`Scores` computes logit_scale * image · text for a block of images, in tiles of a fixed number of rows, so an
image's scores are the same bits whichever block it is in; when N×T×C is small they are computed once and held.
`score_rows` runs the passes a set of rows needs (label-free weights first, then predictions), and keeps only
per-row counts: hits, per-class hits, and the bootstrap resamples' hit sums, never [N, T, C] or
[rows × images × resamples].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from . import fused
from .encode import keep_malloc_arenas
from .ensemble import (
    BALANCED,
    SINGLE,
    WEIGHTED_METHODS,
    BlockOutput,
    Plan,
    Spec,
    Weights,
    base_method,
    evaluate_block,
    label_ranks,
    plan,
)
from .metrics import Resamples
from .weighting import apply_dual, sinkhorn_dual, softmax_multipliers

TILE = 2048  # images per matrix product: every image's scores come from a product of this shape (512: 9 % slower)
STEP = 64  # block sizes are multiples of this
HELD_BYTES = 2 << 30  # scores up to this size are computed once and held
BLOCK_BYTES = 512 << 20  # a pass works on blocks of images whose working set stays about this size
MAX_BLOCK = 8192
CACHE_BYTES = 8 << 20  # what a sweep's block of per-template addends may take, to stay in the CPU's cache


@dataclass(frozen=True)
class Features:
    """What one pass over the images and prompts yields; everything downstream is tensor maths on it."""

    image: torch.Tensor  # [N, D] float32, unit norm
    text: torch.Tensor  # [T, C, D] float32, unit norm
    labels: torch.Tensor  # [N] int64
    logit_scale: float

    def __post_init__(self) -> None:
        n, d = self.image.shape
        assert self.text.ndim == 3 and self.text.shape[2] == d, (self.image.shape, self.text.shape)
        assert self.labels.shape == (n,), (self.labels.shape, n)

    def subset(self, index: torch.Tensor) -> Features:
        """The features of some images only."""
        return Features(self.image[index], self.text, self.labels[index], self.logit_scale)


def compute_scores(
    image: torch.Tensor, text: torch.Tensor, logit_scale: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, T, C] logits of unit-norm image features [B, D] against text features [T, C, D], in tiles of TILE
    images (the last one padded), so the result for an image never depends on the others; written into `out`
    (at least B × T·C floats) when given. A padded tile's product goes into `out` too where it has room for a
    whole tile, instead of into a temporary as large (655 MB for ImageNet's 80,000 prompts)."""
    t, c, d = text.shape
    flat = text.reshape(t * c, d).T
    room = len(image) if out is None else out.numel() // (t * c)
    whole = torch.empty(len(image), t * c) if out is None else out.view(-1)[: room * t * c].view(room, -1)
    for start in range(0, len(image), TILE):
        tile = image[start : start + TILE]
        if len(tile) == TILE:
            torch.mm(tile, flat, out=whole[start : start + TILE])
            continue
        padded = torch.cat([tile, tile.new_zeros(TILE - len(tile), d)])
        if start + TILE <= room:
            torch.mm(padded, flat, out=whole[start : start + TILE])
        else:
            whole[start : len(image)] = (padded @ flat)[: len(tile)]
    return whole[: len(image)].mul_(logit_scale).view(len(image), t, c)  # in place: no second copy of a large block


def block_size(bytes_per_image: int) -> int:
    """Images per block so that a block's working set is about BLOCK_BYTES: a multiple of STEP, at least STEP
    and at most MAX_BLOCK images."""
    return min(MAX_BLOCK, max(STEP, BLOCK_BYTES // max(1, bytes_per_image) // STEP * STEP))


class Scores:
    """The scores [N, T, C] of `features`, by blocks of images: held whole when they fit `held_bytes`.

    Each pass asks for the block size its working set allows (`block_size`); `block` forces one size for every
    pass (the tests force tiny blocks to check that results do not depend on them)."""

    def __init__(self, features: Features, block: int | None = None, held_bytes: int = HELD_BYTES):
        self.features = features
        t, c, _ = features.text.shape
        self.per_image = 4 * t * c  # bytes of one image's scores
        self.forced = block
        held = len(features.labels) * self.per_image <= held_bytes
        self.held = compute_scores(features.image, features.text, features.logit_scale) if held else None

    def __len__(self) -> int:
        return len(self.features.labels)

    def blocks(self, size: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, scores [stop - start, T, C]) for consecutive blocks of `size` images (default: a block
        holding a few copies of its scores in BLOCK_BYTES). Scores that are not held are computed in blocks of
        whole products (TILE images), into one buffer: a block is valid until the next one is asked for."""
        f = self.features
        size = self.forced or size or block_size(4 * self.per_image)
        if self.held is not None:
            for start in range(0, len(self), size):
                yield start, min(start + size, len(self)), self.held[start : start + size]
            return
        if not self.forced:
            size = -(-size // TILE) * TILE  # whole products: no padding computed in vain
        buffer = torch.empty(min(size, len(self)) * self.per_image // 4)
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            yield start, stop, compute_scores(f.image[start:stop], f.text, f.logit_scale, out=buffer)


def pass_block(scores: Scores, group_plan: Plan) -> int:
    """Images per block for a pass of `evaluate_block` over a plan. With one subset per size (all templates, say)
    the block's scores and their per-template addends fill BLOCK_BYTES; with many (a sweep) the addends are kept
    to CACHE_BYTES, so that they and each chunk of subset sums stay in the CPU's cache (several times faster)."""
    addends = scores.per_image * (1 + len(group_plan.accumulators))
    if max(len(level.members) for level in group_plan.levels) == 1:
        return block_size(addends + scores.per_image)
    return min(block_size(addends), max(STEP, CACHE_BYTES // addends // STEP * STEP))


class WeightFit:
    """ZPE's and CARPRT's template weights from every image, accumulated block by block.

    ZPE: a template's score is the mean over images of its top logit after subtracting, per class, the
    template's mean logit over the images (computed from the mean image feature: logits are linear in it).
    CARPRT: the relevance of (template t, class c) is the mean top logit of the images t predicts as c.
    Sums are float64, so they do not depend on the block size.
    """

    def __init__(self, features: Features, methods: set[str]):
        self.methods, self.n = methods, 0
        t, c, _ = features.text.shape
        self.compiled = fused.worth_it(len(features.labels) * t * c)  # statistics from a kernel, as for the rows
        mean_image = features.image.double().mean(dim=0)
        self.mu = (features.logit_scale * torch.einsum("d,tcd->tc", mean_image, features.text.double())).float()
        self.zpe_sum = torch.zeros(t, dtype=torch.float64)
        self.top_sum = torch.zeros(t, c, dtype=torch.float64)
        self.top_count = torch.zeros(t, c, dtype=torch.float64)

    def add(self, block: torch.Tensor) -> None:
        self.n += len(block)
        zpe, carprt = "zpe" in self.methods, "carprt" in self.methods
        if self.compiled:
            corrected, top, pred = fused.weight_statistics(block, self.mu if zpe else None)
        else:
            corrected = (block - self.mu).amax(dim=2) if zpe else None
            top, pred = block.max(dim=2) if carprt else (None, None)  # [B, T]
        if zpe:
            self.zpe_sum += corrected.double().sum(dim=0)
        if carprt:
            self.top_sum.scatter_add_(1, pred.T, top.T.double())
            self.top_count.scatter_add_(1, pred.T, torch.ones(pred.T.shape, dtype=torch.float64))

    def weights(self) -> Weights:
        return Weights(
            zpe=softmax_multipliers(self.zpe_sum / self.n) if "zpe" in self.methods else None,
            carprt=softmax_multipliers(self.top_sum / self.top_count.clamp(min=1))
            if "carprt" in self.methods
            else None,
        )


@dataclass
class Tallies:
    """Per-row counts over the images seen so far (rows R, classes C, resamples S)."""

    hits1: torch.Tensor  # [R] int64
    hits5: torch.Tensor  # [R] int64 (rows without a ranking stay 0)
    per_class: torch.Tensor  # [R, C] float32 hits per true class (exact integers)
    boot1: torch.Tensor | None  # [R, S] int32 hit sums under each resample
    boot5: torch.Tensor | None
    pred: torch.Tensor | None  # [R, N] kept predictions, when small enough

    @classmethod
    def empty(cls, rows: int, classes: int, n: int, resamples: int, keep_pred: bool) -> Tallies:
        boot = (lambda: torch.zeros(rows, resamples, dtype=torch.int32)) if resamples else (lambda: None)
        pred = torch.empty(rows, n, dtype=torch.int64) if keep_pred else None
        return cls(
            torch.zeros(rows, dtype=torch.int64),
            torch.zeros(rows, dtype=torch.int64),
            torch.zeros(rows, classes),
            boot(),
            boot(),
            pred,
        )

    def add(self, ids: Sequence[int], start: int, stop: int, out: BlockOutput, labels, resamples) -> None:
        """Count rows `ids`' hits [R, B] and label ranks [R, B] (-1: no ranking) for images start:stop."""
        rows = _as_rows(ids)
        hit1 = out.hit1
        hit5 = (out.above >= 0) & (out.above < 5)
        onehot = torch.zeros(len(labels), self.per_class.shape[1]).scatter_(1, labels[:, None], 1.0)
        per_class = hit1.float() @ onehot
        self.per_class[rows] += per_class
        self.hits1[rows] += per_class.sum(dim=1).long()
        self.hits5[rows] += (hit5.float() @ torch.ones(len(labels))).long()
        if self.boot1 is not None:
            self.boot1[rows] += resamples.sums(hit1, start, stop).to(torch.int32)
            self.boot5[rows] += resamples.sums(hit5, start, stop).to(torch.int32)
        if self.pred is not None:
            self.pred[ids, start:stop] = out.pred


def _as_rows(ids: Sequence[int]) -> slice | torch.Tensor:
    """Row ids as a slice where they are consecutive (so `x[rows] += y` adds in place, in one pass), else a tensor."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    if len(ids) and int(ids[-1]) - int(ids[0]) == len(ids) - 1 and bool((ids.diff() == 1).all()):
        return slice(int(ids[0]), int(ids[-1]) + 1)
    return ids


def _balance_rows(scores: Scores, rows: Sequence[Spec], ids: list[int], weights: Weights, tallies, resamples) -> None:
    """Balanced rows: each base method's probabilities [N, C] for all images, rebalanced (Sinkhorn), counted.

    Rows are done in groups whose probabilities fit the block budget, one pass over the images per group."""
    labels = scores.features.labels
    n, c = len(scores), scores.features.text.shape[1]
    per_group = max(1, BLOCK_BYTES * 4 // (4 * n * c))
    for first in range(0, len(ids), per_group):
        group = ids[first : first + per_group]
        bases = plan([(base_method(rows[i][0]), rows[i][1]) for i in group], scores.features.text)
        probs = {j: torch.empty(n, c) for j in range(len(group))}
        for start, stop, block in scores.blocks(pass_block(scores, bases)):
            out = evaluate_block(block, labels[start:stop], bases, weights, frozenset(probs))
            for j in probs:
                probs[j][start:stop] = out.probs[j]
        for j, i in enumerate(group):
            balanced = apply_dual(probs[j], sinkhorn_dual(probs[j]))[None]
            hit1, above = label_ranks(balanced, labels)
            pred = balanced.argmax(dim=2) if tallies.pred is not None else None
            tallies.add([i], 0, n, BlockOutput(hit1, above, pred, {}), labels, resamples)
            del probs[j]


def score_rows(scores: Scores, rows: Sequence[Spec], resamples: Resamples | None, keep_pred: bool = False) -> Tallies:
    """Counts for every row over every image: one pass for the rows that need no label-free weights (the
    weights are fitted in the same pass), one for the weighted rows, and one per group of balanced rows.
    Predictions [rows, N] are kept with `keep_pred`."""
    f = scores.features
    n, c = len(scores), f.text.shape[1]
    keep_malloc_arenas()
    tallies = Tallies.empty(len(rows), c, n, resamples.count if resamples else 0, keep_pred)
    balanced = [i for i, (m, _) in enumerate(rows) if m is not SINGLE and m.endswith(BALANCED)]
    weighted = [i for i, (m, _) in enumerate(rows) if base_method(m) in WEIGHTED_METHODS and m == base_method(m)]
    plain = sorted(set(range(len(rows))) - set(balanced) - set(weighted))
    wanted = {base_method(rows[i][0]) for i in balanced + weighted} & WEIGHTED_METHODS
    fit = WeightFit(f, wanted) if wanted else None

    def one_pass(group: list[int], weights: Weights, fitting: bool) -> None:
        group_plan = plan([rows[i] for i in group], f.text) if group else None
        compiled = fused.worth_it(sum(len(rows[i][1]) for i in group) * n * c)
        evaluate = partial(fused.evaluate_block, workspace=torch.empty(0)) if compiled else evaluate_block
        for start, stop, block in scores.blocks(pass_block(scores, group_plan) if group_plan else None):
            if fitting:
                fit.add(block)
            if group_plan is not None:
                out = evaluate(block, f.labels[start:stop], group_plan, weights, want_pred=keep_pred)
                tallies.add(group, start, stop, out, f.labels[start:stop], resamples)

    if plain or fit is not None:
        one_pass(plain, Weights(), fitting=fit is not None)
    weights = fit.weights() if fit is not None else Weights()
    if weighted:
        one_pass(weighted, weights, fitting=False)
    if balanced:
        _balance_rows(scores, rows, balanced, weights, tallies, resamples)
    return tallies


def predictions(scores: Scores, rows: Sequence[Spec]) -> torch.Tensor:
    """Predictions [len(rows), N] of a few rows (a pass over the images)."""
    return score_rows(scores, rows, None, keep_pred=True).pred


__all__ = ["Features", "Plan", "Scores", "Tallies", "WeightFit", "compute_scores", "predictions", "score_rows"]
