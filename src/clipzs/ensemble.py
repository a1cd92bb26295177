"""Prompt ensembles over template subsets, as pure functions of a block of scores [B, T, C].

scores[b, t, c] = logit_scale * cos(image b, prompt of template t for class c). A row to evaluate is a method
and a template subset (or `None` and one template: that template alone). Every method's class scores for a subset
are built from sums over the subset's templates in ascending order (acc = x[t1]; acc = acc + x[t2]; ...), computed
for many subsets at once (`subset_sums`); a vote from the subset's per-template predictions. An image's result
never depends on which block it is in or which other rows are evaluated beside it.

Methods:
- `vote-seed`: the original rule, `max(set(preds), key=preds.count)` over the per-template predictions in template
  order (ties go to CPython's set order; `votes.vote_seed`);
- `vote`: majority vote, a tie going to the tied class with the highest summed probability (then the lowest index);
- `prob`, `logit`: mean of the softmax probabilities, of the logits;
- `embedding`: CLIP's ensemble, logits against the renormalised mean text embedding of each class, computed
  from the logit sum as sum_t logits[t, c] / ||sum_t w_tc||;
- `zpe`, `carprt`: weighted logit means with label-free weights estimated from all the images (`weighting`);
- `<method>+balanced`: a score method's probabilities rebalanced to a uniform class marginal (`weighting`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from .errors import ClipzsError

METHODS = ("vote-seed", "vote", "prob", "logit", "embedding", "zpe", "carprt")
VOTE_METHODS = frozenset({"vote-seed", "vote"})
WEIGHTED_METHODS = frozenset({"zpe", "carprt"})  # weights need a pass over every image first
BALANCED = "+balanced"  # suffix: a score method's probabilities rebalanced to a uniform class marginal
MAX_SWEEP_TEMPLATES = 12
CHUNK_BYTES = 16 << 20  # subsets are summed and scored a few at a time, so their [M, B, C] stays in the CPU's cache
SINGLE = None  # the method of a single-template row

Spec = tuple[str | None, tuple[int, ...]]  # (method or SINGLE, 0-based template subset)
# the running sums (accumulators) each method's class scores are computed from
NEEDS = {
    SINGLE: ("logit",),
    "logit": ("logit",),
    "embedding": ("logit",),
    "prob": ("prob",),
    "vote": ("prob",),
    "vote-seed": (),
    "zpe": ("zpe",),
    "carprt": ("carprt",),
}


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
            f"ensemble: unknown method(s) {', '.join(unknown) or '(none)'}: use 'all' or a comma list of "
            f"{', '.join(METHODS)} (score methods also as <method>{BALANCED})",
            parameter="ensemble",
        )
    if balance:
        names += [n + BALANCED for n in names if n in METHODS and n not in VOTE_METHODS and n + BALANCED not in names]
    return list(dict.fromkeys(names))


def all_subsets(num_templates: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of template indices, by size, then in lexicographic order."""
    if num_templates > MAX_SWEEP_TEMPLATES:
        raise ClipzsError(
            f"sweep over {num_templates} templates would be {2**num_templates - 1} subsets; "
            f"it is limited to {MAX_SWEEP_TEMPLATES} templates",
            parameter="sweep",
        )
    return [s for k in range(1, num_templates + 1) for s in combinations(range(num_templates), k)]


def base_method(method: str | None) -> str | None:
    return None if method is None else method.removesuffix(BALANCED)


def ranks_method(method: str | None) -> bool:
    """Whether a row's method gives class scores (so a top-5 accuracy), unlike the votes."""
    return base_method(method) not in VOTE_METHODS


@dataclass(frozen=True)
class Weights:
    """Label-free statistics of the whole image set that some methods need, as multipliers of each template's
    logits: `zpe` [T] and `carprt` [T, C], each exp(score - max over templates), so a subset's softmax weights are
    its multipliers divided by their sum."""

    zpe: torch.Tensor | None = None
    carprt: torch.Tensor | None = None


@dataclass(frozen=True)
class Level:
    """The requested subsets of one size."""

    members: torch.Tensor  # [M, size] int64: the subsets, templates ascending
    requests: dict[str | None, tuple[torch.Tensor, torch.Tensor]]  # method -> (row ids [R], subsets' index [R], sorted)


@dataclass(frozen=True)
class Plan:
    """How to compute a list of rows block by block: their subsets, grouped by size."""

    rows: tuple[Spec, ...]
    levels: tuple[Level, ...]
    accumulators: frozenset[str]
    norms: torch.Tensor | None  # [rows, C] ||sum_t w_tc|| for embedding rows (others unused)


def accumulators(methods: set[str | None]) -> frozenset[str]:
    """The sums over a subset's templates that rows of these methods are computed from."""
    return frozenset(name for method in methods for name in NEEDS[base_method(method)])


def text_norms(text: torch.Tensor, subsets: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """||sum over the subset's templates of w_tc|| [len(subsets), C] from text [T, C, D], summed in template order
    (`subset_sums`), a few subsets of one size at a time."""
    out = torch.empty(len(subsets), text.shape[1])
    at_once = max(1, CHUNK_BYTES // (4 * text.shape[1] * text.shape[2]))
    for size in {len(s) for s in subsets}:
        rows = [i for i, s in enumerate(subsets) if len(s) == size]
        for first in range(0, len(rows), at_once):
            chunk = rows[first : first + at_once]
            members = torch.tensor([subsets[i] for i in chunk], dtype=torch.int64)
            out[chunk] = subset_sums(text, members).norm(dim=-1)
    return out


def _by_position(ids: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ids and their subsets' positions in the level, sorted by position (so a chunk of the level is a slice)."""
    order = sorted(range(len(ids)), key=positions.__getitem__)
    return torch.tensor([ids[i] for i in order]), torch.tensor([positions[i] for i in order])


def plan(rows: Sequence[Spec], text: torch.Tensor) -> Plan:
    """The rows' subsets (templates sorted), grouped by size, with what each row's method needs."""
    rows = tuple((m, tuple(sorted(s))) for m, s in rows)
    if any(not s for _, s in rows):
        raise ValueError("every row needs at least one template")
    levels = []
    for size in sorted({len(s) for _, s in rows}):
        subsets = sorted({s for _, s in rows if len(s) == size})
        index = {s: i for i, s in enumerate(subsets)}
        members = torch.tensor(subsets, dtype=torch.int64).reshape(len(subsets), size)
        requests: dict[str | None, tuple[list[int], list[int]]] = {}
        for row, (method, subset) in enumerate(rows):
            if len(subset) == size:
                ids, positions = requests.setdefault(method, ([], []))
                ids.append(row)
                positions.append(index[subset])
        levels.append(
            Level(
                members=members,
                requests={m: _by_position(ids, pos) for m, (ids, pos) in requests.items()},
            )
        )
    embedding = [i for i, (m, _) in enumerate(rows) if base_method(m) == "embedding"]
    norms = None
    if embedding:
        norms = torch.zeros(len(rows), text.shape[1])
        norms[embedding] = text_norms(text, [rows[i][1] for i in embedding])
    return Plan(rows, tuple(levels), accumulators({m for m, _ in rows}), norms)


@functools.cache
def products_add_in_order(templates: int) -> bool:
    """Whether a float32 matrix product with a 0/1 left factor gives, bit for bit, the sum of the selected rows
    added one by one in order (x1 + x2, then + x3, ...): true of BLAS kernels that accumulate the inner
    dimension in order with fused multiply-adds, checked here on random data for this inner size before use."""
    generator = torch.Generator().manual_seed(templates)
    x = torch.randn(templates, 4099, generator=generator) * 40
    members = [sorted(torch.randperm(templates, generator=generator)[: 1 + k % templates].tolist()) for k in range(64)]
    indicator = torch.zeros(len(members), templates)
    for i, subset in enumerate(members):
        indicator[i, subset] = 1.0
    product = indicator @ x
    return all(torch.equal(product[i], _sequential(x, subset)) for i, subset in enumerate(members))


def _sequential(x: torch.Tensor, subset: Sequence[int]) -> torch.Tensor:
    total = x[subset[0]].clone()
    for t in subset[1:]:
        total += x[t]
    return total


def indicator(members: torch.Tensor, templates: int) -> torch.Tensor:
    """[M, T] float32 of subsets [M, size]: 1 where a template is in the subset."""
    return torch.zeros(len(members), templates).scatter_(1, members, 1.0)


def subset_sums(addends: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Sums [M, B, C] over each of the subsets [M, size] of per-template addends [T, B, C], added in template order:
    one matrix product (the indicator times the addends) where it adds in order (`products_add_in_order`), else
    one gather and addition per position in the subsets."""
    t, b, c = addends.shape
    if members.shape[1] == 1:  # single templates: the addends themselves, copied only when some are left out
        whole = len(members) == t and bool((members[:, 0] == torch.arange(t)).all())
        return addends if whole else addends.index_select(0, members[:, 0])
    if addends.dtype == torch.float32 and products_add_in_order(t):
        return (indicator(members, t) @ addends.reshape(t, b * c)).view(len(members), b, c)
    sums = addends.index_select(0, members[:, 0])
    for position in range(1, members.shape[1]):
        sums += addends.index_select(0, members[:, position])
    return sums


@dataclass(frozen=True)
class BlockOutput:
    """What a block of images gives for each row of a plan."""

    hit1: torch.Tensor  # [R, B] bool: the prediction (argmax, the first on ties) is the label
    above: torch.Tensor  # [R, B] int64 classes scoring strictly above the label (top-k hit: above < k); -1 votes
    pred: torch.Tensor | None  # [R, B] int64 predictions, when asked for
    probs: dict[int, torch.Tensor]  # row -> [B, C] class probabilities, for the rows asked for


def _count(compare, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many entries along the last dim satisfy `compare(a, b)` (torch.gt, torch.eq, ...): [..., C] -> [...]
    float32, exact (C < 2**24). The comparison is written as 0./1. floats and summed as floats: several times
    faster here than summing a boolean tensor or a matrix-vector product."""
    return compare(a, b, out=torch.empty(a.shape)).sum(dim=-1)  # `b` broadcasts to `a`


def _largest_below(q: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """The largest float32 v with fl(v / divisor) <= q, elementwise (divisor > 0): since rounded division is
    monotone, fl(s / divisor) > q exactly when s > v, so a comparison with v replaces dividing every score."""
    v = q * divisor
    for direction in (torch.inf, -torch.inf):
        for _ in range(64):
            step = torch.nextafter(v, torch.full_like(v, direction))
            move = (step / divisor <= q) if direction > 0 else (v / divisor > q)
            if not bool(move.any()):
                break
            v = torch.where(move, step, v)
        else:  # pragma: no cover - rounding moves a quotient by an ulp or two, never 64
            raise AssertionError("no threshold found")
    return v


def label_ranks(
    sums: torch.Tensor, labels: torch.Tensor, divisor: torch.Tensor | None = None, ranked: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hit1 [M, B] bool, above [M, B] int64 or None) of class scores sums / divisor [M, B, C] (divisor [M, 1, 1]
    or None for 1) against labels [B]: whether their argmax (the first maximum, as `torch.argmax` picks) is the
    label, and with `ranked` how many classes score strictly above the label (the label is in the top k when
    above < k). The quotients are never formed: the sums are compared with the largest sum whose quotient does
    not exceed the label's, and the best other class with the largest sum whose quotient is below the label's
    (above it, it ties with the label: then the first of the tied classes wins, worked out where that happens)."""
    m, b, c = sums.shape
    index = labels[None, :, None].expand(m, b, 1)
    label_sums = sums.gather(2, index)
    below_label = torch.nextafter(label_sums, torch.tensor(-torch.inf))
    if divisor is None:
        bound, tie_floor = label_sums, below_label
    else:
        divisor = divisor.expand_as(label_sums)
        label_scores = label_sums / divisor
        bound = _largest_below(label_scores, divisor)
        tie_floor = _largest_below(torch.nextafter(label_scores, torch.tensor(-torch.inf)), divisor)
    above = _count(torch.gt, sums, bound).long() if ranked else None
    sums.scatter_(2, index, -torch.inf)
    others = sums.amax(dim=2, keepdim=True)  # the best other class (the label's entries restored, bit for bit)
    sums.scatter_(2, index, label_sums)
    hit1 = (others <= bound)[..., 0]
    tied = (hit1 & (others > tie_floor)[..., 0]).nonzero()
    if len(tied):
        rows = sums[tied[:, 0], tied[:, 1]]
        scores = rows if divisor is None else rows / divisor[tied[:, 0], tied[:, 1]]
        hit1[tied[:, 0], tied[:, 1]] = scores.argmax(dim=1) == labels[tied[:, 1]]
    return hit1, above


def _votes_per_class(votes: torch.Tensor) -> torch.Tensor:
    """[P, k]: how many of the row's votes [P, k] go to the class of each vote."""
    return torch.eq(votes[:, :, None], votes[:, None, :]).sum(dim=2, dtype=torch.int32)


def vote_winners(method: str, votes: torch.Tensor, prob_sums: torch.Tensor | None = None) -> torch.Tensor:
    """The vote of each row of per-template predictions votes [P, k] (templates in order): for `vote-seed`
    `max(set(p), key=p.count)` (`votes.vote_seed` where classes tie), for `vote` the most voted class with the
    highest summed probability, prob_sums [P, k] the sum at each vote's class (then the lowest class)."""
    per_vote = _votes_per_class(votes)
    most = per_vote.amax(dim=1, keepdim=True)
    top = per_vote == most
    past = int(votes.max()) + 1 if len(votes) else 0  # above every class: `amin` skips it
    if method == "vote":
        scores = prob_sums.masked_fill(~top, -torch.inf)
        return torch.where(scores == scores.amax(dim=1, keepdim=True), votes, past).amin(dim=1)
    winners = torch.where(top, votes, past).amin(dim=1)
    tied = (top.sum(dim=1) > most[:, 0]).nonzero()[:, 0]  # more votes at the top than one class has
    if len(tied):
        from .votes import vote_seed

        winners[tied] = torch.from_numpy(vote_seed(votes[tied].numpy()))
    return winners


def vote_hits(
    method: str, votes: torch.Tensor, labels: torch.Tensor, prob_sums: torch.Tensor | None = None
) -> torch.Tensor:
    """hit1 [M, B] of a vote method from the subsets' per-template predictions votes [M, B, k] (templates in
    order) and, for `vote`, their summed probabilities [M, B, C]. Only where the label has some votes but not
    most of them are the other classes' votes counted (a majority is the only class with the most votes, and no
    vote is no hit), and only where the label ties with another class for the most is the vote worked out."""
    label_votes = torch.eq(votes, labels[:, None]).sum(dim=2, dtype=torch.int32)
    hit1 = label_votes * 2 > votes.shape[2]
    at = ((label_votes > 0) & ~hit1).nonzero()
    if not len(at):
        return hit1
    ordered, label_votes = votes[at[:, 0], at[:, 1]], label_votes[at[:, 0], at[:, 1]]
    per_vote = _votes_per_class(ordered)
    top = per_vote.amax(dim=1) == label_votes
    tied = top & (torch.eq(per_vote, label_votes[:, None]).sum(dim=1, dtype=torch.int32) > label_votes)
    hit1[at[top, 0], at[top, 1]] = True
    if bool(tied.any()):
        at, ordered = at[tied], ordered[tied]
        sums = None if prob_sums is None else prob_sums[at[:, :1], at[:, 1:], ordered]
        hit1[at[:, 0], at[:, 1]] = vote_winners(method, ordered, sums) == labels[at[:, 1]]
    return hit1


def vote_predictions(method: str, votes: torch.Tensor, prob_sums: torch.Tensor | None = None) -> torch.Tensor:
    """Predictions [M, B] of a vote method from votes [M, B, k] (and summed probabilities [M, B, C] for `vote`, or
    anything indexed as they are: `fused.SubsetSums`)."""
    m, b, k = votes.shape
    flat = votes.reshape(m * b, k)
    sums = None
    if prob_sums is not None:
        at = torch.cartesian_prod(torch.arange(m), torch.arange(b))  # (subset, image) of each row of `flat`
        sums = prob_sums[at[:, :1], at[:, 1:], flat]
    return vote_winners(method, flat, sums).view(m, b)


def addends(per_template: torch.Tensor, accumulators: frozenset[str], weights: Weights) -> dict[str, torch.Tensor]:
    """Per-template addends [T, B, C] of each accumulator, from per-template scores [T, B, C]."""
    inputs = {"logit": per_template}
    if "prob" in accumulators:
        inputs["prob"] = per_template.softmax(dim=2)
    if "zpe" in accumulators:
        inputs["zpe"] = per_template * weights.zpe[:, None, None]
    if "carprt" in accumulators:
        inputs["carprt"] = per_template * weights.carprt[:, None, :]
    return inputs


def combine_sums(
    method: str | None,
    sums: dict[str, torch.Tensor],
    totals: dict[str, torch.Tensor],
    size: int,
    norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(numerators [M, B, C], divisor [M, 1, 1] or None) of a score method's class scores numerators / divisor
    for M subsets of `size` templates, from their sums (`sums[name]` [M, B, C]; `totals` their summed
    multipliers, zpe [M, 1], carprt [M, C]; `norms` [M, C] their text-sum norms for `embedding`). The per-subset
    divisor is left undone where there is one: it cannot change which class wins, only be rounded in (see
    `label_ranks`)."""
    if method in (SINGLE, "logit", "prob"):
        divisor = (
            None
            if size == 1
            else torch.full((sums["logit" if method != "prob" else "prob"].shape[0], 1, 1), float(size))
        )
        return sums["prob" if method == "prob" else "logit"], divisor
    if method == "embedding":
        return sums["logit"] / norms[:, None, :], None
    if method == "zpe":
        return sums["zpe"], totals["zpe"][:, :, None]
    return sums["carprt"] / totals["carprt"][:, None, :], None


def multipliers_of(weights: Weights) -> dict[str, torch.Tensor]:
    """Each weighted accumulator's per-template multipliers, zpe [T, 1] and carprt [T, C]."""
    found = {"zpe": None if weights.zpe is None else weights.zpe[:, None], "carprt": weights.carprt}
    return {k: v for k, v in found.items() if v is not None}


def evaluate_block(
    scores: torch.Tensor,
    labels: torch.Tensor,
    plan: Plan,
    weights: Weights = Weights(),
    want_probs: frozenset = frozenset(),
    want_pred: bool = False,
) -> BlockOutput:
    """Hits and label ranks of every row of `plan` for one block of scores [B, T, C] with labels [B]; with
    `want_pred`, the predictions too, and with `want_probs`, the class probabilities of those score rows.
    Balanced rows are not evaluated here: their balancing needs every image's probabilities at once (`scoring`)."""
    per_template = scores.transpose(0, 1).contiguous()  # [T, B, C]
    b = per_template.shape[1]
    inputs = addends(per_template, plan.accumulators, weights)
    multipliers = multipliers_of(weights)
    voting = any(base_method(m) in VOTE_METHODS for level in plan.levels for m in level.requests)
    preds = per_template.argmax(dim=2) if voting else None
    hit1 = torch.empty(len(plan.rows), b, dtype=torch.bool)
    above = torch.full((len(plan.rows), b), -1, dtype=torch.int64)
    pred = torch.empty(len(plan.rows), b, dtype=torch.int64) if want_pred else None
    probs: dict[int, torch.Tensor] = {}
    chunk = max(1, CHUNK_BYTES // max(1, 4 * b * per_template.shape[2]))
    for level in plan.levels:
        size = level.members.shape[1]
        for first in range(0, len(level.members), chunk):  # a chunk of subsets whose sums stay in the CPU's cache
            members = level.members[first : first + chunk]
            sums = {name: subset_sums(inputs[name], members) for name in plan.accumulators}
            totals = {k: indicator(members, len(per_template)) @ v for k, v in multipliers.items()}
            for method, (ids, at) in level.requests.items():
                lo, hi = torch.searchsorted(at, torch.tensor([first, first + len(members)])).tolist()
                if lo == hi:
                    continue
                ids, at = ids[lo:hi], at[lo:hi] - first
                whole = len(at) == len(members)  # every subset of the chunk, in order: no copies
                base = base_method(method)
                needed = {k: sums[k] if whole else sums[k][at] for k in NEEDS[base]}
                row_totals = {k: v if whole else v[at] for k, v in totals.items() if k in needed}
                norms = plan.norms[ids] if base == "embedding" else None
                if base in VOTE_METHODS:
                    votes = preds[members[at]].transpose(1, 2)  # [R, B, size]
                    hit1[ids] = vote_hits(base, votes, labels, needed.get("prob"))
                    if want_pred:
                        pred[ids] = vote_predictions(base, votes, needed.get("prob"))
                    continue
                numerators, divisor = combine_sums(base, needed, row_totals, size, norms)
                hit1[ids], above[ids] = label_ranks(numerators, labels, divisor)
                if want_pred or want_probs.intersection(ids.tolist()):
                    class_scores = numerators if divisor is None else numerators / divisor
                    p = class_scores if base == "prob" else class_scores.softmax(dim=2)
                    probs.update((i, p[j]) for j, i in enumerate(ids.tolist()) if i in want_probs)
                    if want_pred:
                        pred[ids] = class_scores.argmax(dim=2)
    return BlockOutput(hit1, above, pred, probs)
