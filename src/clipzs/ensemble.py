"""Prompt ensembles over template subsets, as pure functions of a block of scores [B, T, C].

scores[b, t, c] = logit_scale * cos(image b, prompt of template t for class c). A row to evaluate is a method
and a template subset (or `None` and one template: that template alone). Every method's class scores for a subset
are built from running sums over the subset's templates in ascending order (acc = x[t1]; acc = acc + x[t2]; ...),
so a subset's sums are its prefix's sums plus one template: a sweep over every subset costs one addition per
subset and accumulator, and an image's result never depends on which block it is in or which other rows are
evaluated beside it.

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

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations, groupby

import torch

from .errors import ClipzsError

METHODS = ("vote-seed", "vote", "prob", "logit", "embedding", "zpe", "carprt")
VOTE_METHODS = frozenset({"vote-seed", "vote"})
WEIGHTED_METHODS = frozenset({"zpe", "carprt"})  # weights need a pass over every image first
BALANCED = "+balanced"  # suffix: a score method's probabilities rebalanced to a uniform class marginal
MAX_SWEEP_TEMPLATES = 12
SINGLE = None  # the method of a single-template row

Spec = tuple[str | None, tuple[int, ...]]  # (method or SINGLE, 0-based template subset)
# the running sums (accumulators) each method's class scores are computed from
NEEDS = {
    SINGLE: ("logit",),
    "logit": ("logit",),
    "embedding": ("logit",),
    "prob": ("prob",),
    "vote": ("prob", "count"),
    "vote-seed": ("count",),
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
    """The subsets of one size that a plan needs: each its parent (index in the previous level) plus a template."""

    parent: torch.Tensor  # [M] int64 (unused for size 1)
    added: torch.Tensor  # [M] int64
    members: torch.Tensor  # [M, size] int64: the subsets themselves
    groups: tuple[tuple[int, int, int], ...]  # (template, start, stop): the subsets are ordered by the template added
    requests: dict[str | None, tuple[list[int], torch.Tensor]]  # method -> (row ids, [R] index into this level)


@dataclass(frozen=True)
class Plan:
    """How to compute a list of rows block by block: the prefix closure of their subsets, level by level."""

    rows: tuple[Spec, ...]
    levels: tuple[Level, ...]
    accumulators: frozenset[str]
    norms: torch.Tensor | None  # [rows, C] ||sum_t w_tc|| for embedding rows (others unused)


def accumulators(methods: set[str | None]) -> frozenset[str]:
    """The running sums that rows of these methods are computed from."""
    return frozenset(name for method in methods for name in NEEDS[base_method(method)])


def text_norms(text: torch.Tensor, subsets: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """||sum over the subset's templates of w_tc|| [len(subsets), C] from text [T, C, D], summed in template order
    along each subset's prefixes, one [C, D] sum per distinct prefix."""
    sums: dict[tuple[int, ...], torch.Tensor] = {}

    def total(subset: tuple[int, ...]) -> torch.Tensor:
        if subset not in sums:
            sums[subset] = text[subset[0]] if len(subset) == 1 else total(subset[:-1]) + text[subset[-1]]
        return sums[subset]

    out = torch.empty(len(subsets), text.shape[1])
    for i, subset in enumerate(subsets):
        out[i] = total(subset).norm(dim=-1)
        for k in range(1, len(subset)):  # keep memory at one chain: drop prefixes no later subset shares
            if i + 1 == len(subsets) or subsets[i + 1][:k] != subset[:k]:
                sums.pop(subset[:k], None)
    return out


def _runs(values) -> list[tuple[int, tuple[int, list]]]:
    """(first position, (value, items)) of each run of equal consecutive values."""
    out, position = [], 0
    for value, group in groupby(values):
        items = list(group)
        out.append((position, (value, items)))
        position += len(items)
    return out


def _in_level_order(ids: list[int], positions: list[int]) -> tuple[list[int], torch.Tensor]:
    """Row ids and their positions in the level, sorted by position (so a request for a whole level is an
    identity and needs no copy)."""
    order = sorted(range(len(ids)), key=positions.__getitem__)
    return [ids[i] for i in order], torch.tensor([positions[i] for i in order], dtype=torch.int64)


def plan(rows: Sequence[Spec], text: torch.Tensor) -> Plan:
    """The levels of prefixes needed to evaluate `rows` (templates sorted within each subset)."""
    rows = tuple((m, tuple(sorted(s))) for m, s in rows)
    if any(not s for _, s in rows):
        raise ValueError("every row needs at least one template")
    needed = {s[:k] for _, s in rows for k in range(1, len(s) + 1)}
    levels, index = [], {}
    for size in range(1, max(len(s) for _, s in rows) + 1):
        subsets = tuple(sorted((s for s in needed if len(s) == size), key=lambda s: (s[-1], s)))
        index.update({s: i for i, s in enumerate(subsets)})
        requests: dict[str | None, tuple[list[int], list[int]]] = {}
        for row, (method, subset) in enumerate(rows):
            if len(subset) == size:
                ids, positions = requests.setdefault(method, ([], []))
                ids.append(row)
                positions.append(index[subset])
        levels.append(
            Level(
                parent=torch.tensor([index[s[:-1]] if size > 1 else 0 for s in subsets], dtype=torch.int64),
                added=torch.tensor([s[-1] for s in subsets], dtype=torch.int64),
                members=torch.tensor(subsets, dtype=torch.int64).reshape(len(subsets), size),
                groups=tuple(
                    (t, first, first + len(list(group)))
                    for first, (t, group) in _runs(subset[-1] for subset in subsets)
                ),
                requests={m: _in_level_order(ids, pos) for m, (ids, pos) in requests.items()},
            )
        )
    embedding = [s for m, s in rows if base_method(m) == "embedding"]
    norms = None
    if embedding:
        norms = torch.zeros(len(rows), text.shape[1])
        ids = [i for i, (m, _) in enumerate(rows) if base_method(m) == "embedding"]
        order = sorted(range(len(ids)), key=lambda j: embedding[j])
        norms[[ids[j] for j in order]] = text_norms(text, [embedding[j] for j in order])
    return Plan(rows, tuple(levels), accumulators({m for m, _ in rows}), norms)


@dataclass(frozen=True)
class BlockOutput:
    """What a block of images gives for each row of a plan."""

    hit1: torch.Tensor  # [R, B] bool: the prediction (argmax, the first on ties) is the label
    above: torch.Tensor  # [R, B] int64 classes scoring strictly above the label (top-k hit: above < k); -1 votes
    pred: torch.Tensor | None  # [R, B] int64 predictions, when asked for
    probs: dict[int, torch.Tensor]  # row -> [B, C] class probabilities, for the rows asked for


def _count(compare, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many entries along the last dim satisfy `compare(a, b)` (torch.gt, torch.eq, ...): [..., C] -> [...]
    float32, exact (C < 2**24). The comparison is written as 0./1. floats and summed by a matrix-vector product,
    many times faster than summing a boolean tensor here."""
    return compare(a, b, out=torch.empty(a.shape)) @ torch.ones(a.shape[-1])  # `b` broadcasts to `a`


def label_ranks(class_scores: torch.Tensor, labels: torch.Tensor, ranked: bool = True) -> tuple[torch.Tensor, ...]:
    """(hit1 [M, B] bool, above [M, B] int64 or None) of class scores [M, B, C] against labels [B]: whether the
    argmax (the first maximum, as `torch.argmax` picks) is the label, and how many classes score strictly above
    the label (the label is in the top k when above < k), without an argmax over every row.

    The label's entries are set to -inf for a moment (and restored, bit for bit) to find the best other score."""
    m, b, _ = class_scores.shape
    index = labels[None, :, None].expand(m, b, 1)
    label_scores = class_scores.gather(2, index)
    above = _count(torch.gt, class_scores, label_scores).long() if ranked else None
    class_scores.scatter_(2, index, -torch.inf)
    others = class_scores.amax(dim=2, keepdim=True)
    class_scores.scatter_(2, index, label_scores)
    hit1 = (others < label_scores)[..., 0]
    ties = ((others == label_scores)[..., 0]).nonzero()  # rare (e.g. two classes of the same name): first one wins
    if len(ties):
        rows = class_scores[ties[:, 0], ties[:, 1]]
        hit1[ties[:, 0], ties[:, 1]] = rows.argmax(dim=1) == labels[ties[:, 1]]
    return hit1, above


def _vote_seed(counts: torch.Tensor, preds: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """`max(set(p), key=p.count)` per (subset, image): counts [M, B, C], per-template preds [T, B], members [M, k]."""
    from .votes import vote_seed

    most = counts.amax(dim=2, keepdim=True)
    top = torch.eq(counts, most, out=torch.empty(counts.shape))
    result = (top @ torch.arange(counts.shape[2], dtype=torch.float32)).long()  # the class, where only one is top
    tied = (top @ torch.ones(counts.shape[2]) > 1).nonzero()
    if len(tied):
        ordered = preds[members[tied[:, 0]], tied[:, 1][:, None]]  # [ties, k], templates in order
        result[tied[:, 0], tied[:, 1]] = torch.from_numpy(vote_seed(ordered.numpy()))
    return result


def addends(per_template: torch.Tensor, accumulators: frozenset[str], weights: Weights) -> dict[str, torch.Tensor]:
    """Per-template addends [T, B, C] of each accumulator, from per-template scores [T, B, C]."""
    inputs = {"logit": per_template}
    if "prob" in accumulators:
        inputs["prob"] = per_template.softmax(dim=2)
    if "count" in accumulators:
        preds = per_template.argmax(dim=2, keepdim=True)
        inputs["count"] = torch.zeros(per_template.shape, dtype=torch.int16).scatter_(2, preds, 1)
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
    preds: torch.Tensor | None = None,
    members: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(predictions [M, B] or None, class scores [M, B, C] or None) of M subsets of `size` templates from their
    accumulated sums (`sums[name]` [M, B, C]; `totals` their summed multipliers, zpe [M, 1], carprt [M, C];
    `norms` [M, C] their text-sum norms for `embedding`; per-template `preds` [T, B] and the subsets' `members`
    [M, size] in template order for `vote-seed`). `vote-seed` gives predictions; `vote` gives its summed
    probabilities with every class but the most voted at -inf, whose argmax is the vote; the others give scores."""
    if method == "vote-seed":
        return _vote_seed(sums["count"], preds, members), None
    if method == "vote":
        counts = sums["count"]
        return None, sums["prob"].masked_fill(counts != counts.amax(dim=2, keepdim=True), -torch.inf)
    if method in (SINGLE, "logit"):
        class_scores = sums["logit"] if size == 1 else sums["logit"] / size
    elif method == "prob":
        class_scores = sums["prob"] / size
    elif method == "embedding":
        class_scores = sums["logit"] / norms[:, None, :]
    else:
        class_scores = sums[method] / totals[method][:, None, :]
    return None, class_scores


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
    preds = per_template.argmax(dim=2) if "count" in plan.accumulators else None
    hit1 = torch.empty(len(plan.rows), b, dtype=torch.bool)
    above = torch.full((len(plan.rows), b), -1, dtype=torch.int64)
    pred = torch.empty(len(plan.rows), b, dtype=torch.int64) if want_pred else None
    probs: dict[int, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    totals: dict[str, torch.Tensor] = {}
    for size, level in enumerate(plan.levels, 1):
        for name in plan.accumulators:
            if size == 1:
                sums[name] = inputs[name].index_select(0, level.added)
            else:
                sums[name] = sums[name].index_select(0, level.parent)
                for t, first, stop in level.groups:
                    sums[name][first:stop] += inputs[name][t]
            if name in multipliers:
                w = multipliers[name][level.added]
                totals[name] = w if size == 1 else totals[name][level.parent] + w
        for method, (ids, at) in level.requests.items():
            base = base_method(method)
            whole = len(at) == len(level.added)  # every subset of the level, in order: no copies
            needed = {k: sums[k] if whole else sums[k][at] for k in NEEDS[base]}
            row_totals = {k: v if whole else v[at] for k, v in totals.items() if k in needed}
            norms = plan.norms[ids] if base == "embedding" else None
            members = level.members[at] if base == "vote-seed" else None
            row_pred, class_scores = combine_sums(base, needed, row_totals, size, norms, preds, members)
            if class_scores is None:
                hit1[ids] = row_pred == labels
            else:
                hit1[ids], ranks = label_ranks(class_scores, labels, ranked=ranks_method(base))
                if ranks is not None:
                    above[ids] = ranks
                if want_pred:
                    row_pred = class_scores.argmax(dim=2)
                if want_probs.intersection(ids):
                    p = class_scores if base == "prob" else class_scores.softmax(dim=2)
                    probs.update((i, p[j]) for j, i in enumerate(ids) if i in want_probs)
            if want_pred:
                pred[ids] = row_pred
    return BlockOutput(hit1, above, pred, probs)
