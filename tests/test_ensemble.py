"""Ensemble methods as `ensemble.plan` + `evaluate_block` compute them on a block of scores [B, T, C], by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipzs.ensemble import (
    METHODS,
    VOTE_METHODS,
    Weights,
    all_subsets,
    combine_sums,
    evaluate_block,
    label_ranks,
    parse_methods,
    plan,
)
from clipzs.errors import ClipzsError
from clipzs.scoring import Features, Scores, WeightFit, compute_scores, predictions
from clipzs.weighting import balance_classes


def run(method, scores, text, subset, weights=None, labels=None):
    """(predictions [B], probabilities [B, C] or None for the votes, label ranks [B]) of one row on one block."""
    labels = torch.zeros(len(scores), dtype=torch.int64) if labels is None else labels
    weights = Weights() if weights is None else weights
    want = frozenset() if method in VOTE_METHODS else frozenset({0})
    out = evaluate_block(scores, labels, plan([(method, tuple(subset))], text), weights, want, want_pred=True)
    assert torch.equal(out.hit1[0], out.pred[0] == labels)
    return out.pred[0], out.probs.get(0), out.above[0]


def fitted(scores: torch.Tensor, features: Features, methods=("zpe", "carprt")) -> Weights:
    fit = WeightFit(features, set(methods))
    fit.add(scores)
    return fit.weights()


def one_hot_scores(rows: list[list[int]], classes: int) -> torch.Tensor:
    """Scores [B, T, C] whose template t predicts rows[b][t] for image b."""
    return F.one_hot(torch.tensor(rows), classes).float() * 10.0


def test_vote_seed_is_the_literal_rule_including_its_tie_order():
    rows = [[3, 3, 5], [5, 1, 1], [2, 1, 0], [9, 4, 9, 4], [7], [12, 40, 33]]
    expected = [max(set(r), key=r.count) for r in rows[:3]]
    assert expected == [3, 1, 0]  # a three-way tie goes to the first class in set order, here the smallest
    scores = one_hot_scores(rows[:3], 6)
    assert run("vote-seed", scores, None, range(3))[0].tolist() == [3, 1, 0]
    for row in rows[3:]:
        got = run("vote-seed", one_hot_scores([row], 41), None, range(len(row)))[0]
        assert got.tolist() == [max(set(row), key=row.count)], row
    assert max(set([12, 40, 33]), key=[12, 40, 33].count) != 12  # the set order is not the template order


def test_vote_breaks_ties_by_summed_probability():
    logits = torch.tensor(
        [
            [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 4.0, 0.0]],  # votes 0,1,1 -> 1
            [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 9.0]],  # votes 0,1,2 tie -> 2 (most confident)
            [[1.0, 1.1, 0.0], [1.0, 1.2, 0.0], [9.0, 0.0, 0.0]],  # votes 1,1,0 -> 1 despite 0's confidence
        ]
    )
    pred, probs, above = run("vote", logits, None, range(3))
    assert pred.tolist() == [1, 2, 1]
    assert probs is None and above.tolist() == [-1, -1, -1]  # a vote ranks nothing: no top-5


def test_votes_of_every_subset_follow_their_rules_with_many_ties():
    torch.manual_seed(5)
    scores = torch.randn(300, 7, 4) * 3  # 4 classes, 7 templates: ties in every subset size
    labels = torch.randint(0, 4, (300,))
    subsets = all_subsets(7)
    rows = [(m, s) for m in VOTE_METHODS for s in subsets]
    out = evaluate_block(scores, labels, plan(rows, None), want_pred=True)
    preds, probs = scores.argmax(dim=2), scores.softmax(dim=2)
    for r, (method, subset) in enumerate(rows):
        votes = [preds[:, t] for t in subset]
        if method == "vote-seed":
            expected = [max(set(p), key=p.count) for p in torch.stack(votes, dim=1).tolist()]
        else:
            counts = sum(F.one_hot(v, 4) for v in votes)
            summed = probs[:, subset[0]].clone()
            for t in subset[1:]:
                summed += probs[:, t]
            expected = summed.masked_fill(counts != counts.amax(dim=1, keepdim=True), -math.inf).argmax(dim=1).tolist()
        assert out.pred[r].tolist() == expected, (method, subset)
        assert torch.equal(out.hit1[r], out.pred[r] == labels), (method, subset)


@pytest.mark.parametrize("divisor", [None, 3.0, 1.5, 12.0])
def test_label_ranks_are_the_argmax_and_rank_of_the_quotients_even_within_an_ulp(divisor):
    generator = torch.Generator().manual_seed(3)
    sums = torch.randint(0, 5, (6, 40, 8), generator=generator).float() * 1.37  # many exact ties
    ulps = torch.randint(-2, 3, sums.shape, generator=generator)  # and sums an ulp or two apart
    for step in (1, 2):
        sums = torch.where(ulps >= step, torch.nextafter(sums, torch.tensor(torch.inf)), sums)
        sums = torch.where(ulps <= -step, torch.nextafter(sums, torch.tensor(-torch.inf)), sums)
    labels = torch.randint(0, 8, (40,), generator=generator)
    divisors = None if divisor is None else torch.full((6, 1, 1), divisor)
    before = sums.clone()
    hit1, above = label_ranks(sums, labels, divisors)
    quotients = sums if divisor is None else sums / divisors
    label_scores = quotients.gather(2, labels[None, :, None].expand(6, 40, 1))
    tied_at_top = ((quotients == label_scores).sum(dim=2) > 1) & (quotients.amax(dim=2, keepdim=True) == label_scores)[
        ..., 0
    ]
    assert int(tied_at_top.sum()) > 5
    label_sums = sums.gather(2, labels[None, :, None].expand(6, 40, 1))
    merged = (quotients == label_scores) & (sums != label_sums)  # different sums, the same rounded quotient
    assert divisor is None or int(merged.sum()) > 5
    assert torch.equal(hit1, quotients.argmax(dim=2) == labels)
    assert torch.equal(above, (quotients > label_scores).sum(dim=2))
    assert torch.equal(sums, before)


def test_prob_and_logit_means_can_disagree():
    logits = torch.tensor([[[10.0, 0.0], [0.0, 3.0], [0.0, 3.0]]])
    assert run("logit", logits, None, range(3))[0].item() == 0  # means 3.33 vs 2
    pred, probs, _ = run("prob", logits, None, range(3))
    p = 1 / (1 + math.exp(-3))
    assert probs[0, 1].item() == pytest.approx((2 * p + 1 / (1 + math.exp(10))) / 3, rel=1e-6)
    assert pred.item() == 1


def test_embedding_mean_by_hand():
    text = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])  # [T=2, C=2, D=2]
    image = torch.tensor([[0.6, 0.8]])
    scores = compute_scores(image, text, 100.0)
    rows = plan([("embedding", (0, 1))], text)
    torch.testing.assert_close(rows.norms, torch.tensor([[math.sqrt(2), 2.0]]))
    class_scores, _ = combine_sums("embedding", {"logit": (scores[:, 0] + scores[:, 1])[None]}, {}, 2, rows.norms)
    assert class_scores[0, 0].tolist() == pytest.approx([100 * 1.4 / math.sqrt(2), 60.0], rel=1e-6)
    assert run("embedding", scores, text, (0, 1))[0].tolist() == [0]


def test_embedding_mean_equals_renormalised_mean_text_embedding():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(50, 8), dim=-1)
    text = F.normalize(torch.randn(4, 6, 8), dim=-1)
    all_scores = compute_scores(image, text, 100.0)
    for subset in [(0,), (1, 3), (0, 1, 2, 3)]:
        direct = 100.0 * image @ F.normalize(text[list(subset)].mean(0), dim=-1).T
        pred, probs, _ = run("embedding", all_scores, text, subset)
        torch.testing.assert_close(probs, direct.softmax(dim=1), rtol=1e-4, atol=1e-5)
        assert torch.equal(pred, direct.argmax(1))


def test_every_method_on_one_template_is_that_templates_argmax():
    torch.manual_seed(1)
    image, text = F.normalize(torch.randn(30, 8), dim=-1), F.normalize(torch.randn(3, 5, 8), dim=-1)
    features = Features(image, text, torch.zeros(30, dtype=torch.int64), 100.0)
    all_scores = compute_scores(image, text, 100.0)
    weights = fitted(all_scores, features)
    expected = all_scores[:, 2].argmax(1)
    assert len(set(expected.tolist())) > 1
    for method in METHODS:
        pred, probs, above = run(method, all_scores, text, (2,), weights)
        assert torch.equal(pred, expected), method
        assert (probs is None) == (method in VOTE_METHODS), method
        assert bool((above == -1).all()) == (method in VOTE_METHODS), method
    through_scores = predictions(Scores(features), [(m, (2,)) for m in METHODS])
    assert all(torch.equal(p, expected) for p in through_scores)


def test_a_row_reads_only_its_subset():
    torch.manual_seed(2)
    image, text = F.normalize(torch.randn(20, 8), dim=-1), F.normalize(torch.randn(3, 5, 8), dim=-1)
    changed = text.clone()
    changed[1] = F.normalize(torch.randn(5, 8), dim=-1)  # template 1's scores change for every image
    labels = torch.zeros(20, dtype=torch.int64)
    rows = [(m, (0, 2)) for m in parse_methods("all", balance=True)]
    before = predictions(Scores(Features(image, text, labels, 100.0)), rows)
    after = predictions(Scores(Features(image, changed, labels, 100.0)), rows)
    assert not torch.equal(compute_scores(image, text, 100.0)[:, 1], compute_scores(image, changed, 100.0)[:, 1])
    for (method, _), b, a in zip(rows, before, after, strict=True):
        assert torch.equal(b, a), method


def test_subsets_and_method_parsing():
    subsets = all_subsets(5)
    assert len(subsets) == 31 and subsets[:2] == [(0,), (1,)] and subsets[-1] == (0, 1, 2, 3, 4)
    assert len(set(subsets)) == 31
    with pytest.raises(ClipzsError, match="limited to 12 templates") as error:
        all_subsets(13)
    assert error.value.parameter == "sweep"
    assert parse_methods("all") == list(METHODS)
    assert parse_methods("prob, embedding") == ["prob", "embedding"]
    with pytest.raises(ClipzsError, match="unknown method.*median") as error:
        parse_methods("prob,median")
    assert error.value.parameter == "ensemble"
    with pytest.raises(ClipzsError, match="unknown method"):
        parse_methods(" , ")


def biased_features(n: int = 60, seed: int = 3) -> Features:
    """Images sharing one direction that class 0's prompts point along: every template favours class 0."""
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(8, generator=g), dim=0)
    image = F.normalize(torch.randn(n, 8, generator=g) + 2.0 * common, dim=-1)
    text = F.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    text[:, 0] = F.normalize(common + 0.2 * torch.randn(3, 8, generator=g), dim=-1)
    return Features(image, text, torch.arange(n) % 4, 100.0)


def test_weighted_methods_and_balanced_variants():
    features = biased_features()
    scores = Scores(features)
    everything = (0, 1, 2)
    weights = fitted(scores.held, features)
    for method in ("prob", "logit", "embedding", "zpe", "carprt"):
        plain, balanced = predictions(scores, [(method, everything), (method + "+balanced", everything)])
        _, probs, _ = run(method, scores.held, features.text, everything, weights)
        assert (plain == 0).sum() > len(plain) / 3, method  # the bias the balancing must undo (uniform: 1/4)
        rebalanced = balance_classes(probs)
        assert rebalanced.sum(dim=1).sub(1).abs().max() < 1e-5, method
        assert rebalanced.mean(dim=0).sub(0.25).abs().max() < 1e-3, method
        assert torch.equal(balanced, rebalanced.argmax(dim=1)), method
        assert (balanced == 0).sum() < (plain == 0).sum(), method


def test_balance_option_adds_variants_of_score_methods_only():
    assert parse_methods("vote,embedding", balance=True) == ["vote", "embedding", "embedding+balanced"]
    assert parse_methods("zpe+balanced") == ["zpe+balanced"]
    with pytest.raises(ClipzsError, match="unknown method"):
        parse_methods("vote+balanced")
    assert len(parse_methods("all", balance=True)) == len(METHODS) + 5
