import math

import pytest
import torch
import torch.nn.functional as F

from clipzs.ensemble import (
    METHODS,
    all_subsets,
    combine,
    embedding_mean,
    logit_mean,
    parse_methods,
    prob_mean,
    scores,
    vote,
    vote_seed,
)
from clipzs.errors import ClipzsError


def test_vote_seed_is_the_literal_rule_including_its_tie_order():
    rows = [[3, 3, 5], [5, 1, 1], [2, 1, 0], [9, 4, 9, 4], [7], [12, 40, 33]]
    expected = [max(set(r), key=r.count) for r in rows[:3]]
    assert expected == [3, 1, 0]  # a three-way tie goes to the first class in set order, here the smallest
    assert vote_seed(torch.tensor(rows[:3])).tolist() == [3, 1, 0]
    for row in rows[3:]:
        assert vote_seed(torch.tensor([row])).tolist() == [max(set(row), key=row.count)]


def test_vote_breaks_ties_by_summed_probability():
    logits = torch.tensor(
        [
            [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 4.0, 0.0]],  # votes 0,1,1 -> 1
            [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 9.0]],  # votes 0,1,2 tie -> 2 (most confident)
            [[1.0, 1.1, 0.0], [1.0, 1.2, 0.0], [9.0, 0.0, 0.0]],  # votes 1,1,0 -> 1 despite 0's confidence
        ]
    )
    assert vote(logits).tolist() == [1, 2, 1]


def test_prob_and_logit_means_can_disagree():
    logits = torch.tensor([[[10.0, 0.0], [0.0, 3.0], [0.0, 3.0]]])
    assert logit_mean(logits).argmax(1).item() == 0  # means 3.33 vs 2
    probs = prob_mean(logits)
    p = 1 / (1 + math.exp(-3))
    assert probs[0, 1].item() == pytest.approx((2 * p + 1 / (1 + math.exp(10))) / 3, rel=1e-6)
    assert probs.argmax(1).item() == 1


def test_embedding_mean_by_hand():
    text = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])  # [T=2, C=2, D=2]
    image = torch.tensor([[0.6, 0.8]])
    logits = embedding_mean(scores(image, text, 100.0), text)
    assert logits[0].tolist() == pytest.approx([100 * 1.4 / math.sqrt(2), 60.0], rel=1e-6)


def test_embedding_mean_equals_renormalised_mean_text_embedding():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(50, 8), dim=-1)
    text = F.normalize(torch.randn(4, 6, 8), dim=-1)
    all_scores = scores(image, text, 100.0)
    for subset in [(0,), (1, 3), (0, 1, 2, 3)]:
        direct = 100.0 * image @ F.normalize(text[list(subset)].mean(0), dim=-1).T
        got = combine("embedding", all_scores, text, subset)
        torch.testing.assert_close(got.scores, direct, rtol=1e-5, atol=1e-4)
        assert torch.equal(got.pred, direct.argmax(1))


def test_every_method_on_one_template_is_that_templates_argmax():
    torch.manual_seed(1)
    image, text = F.normalize(torch.randn(30, 8), dim=-1), F.normalize(torch.randn(3, 5, 8), dim=-1)
    all_scores = scores(image, text, 100.0)
    for method in METHODS:
        result = combine(method, all_scores, text, (2,))
        assert torch.equal(result.pred, all_scores[:, 2].argmax(1)), method
        assert (result.scores is None) == (method in ("vote", "vote-seed"))


def test_combine_reads_only_its_subset():
    torch.manual_seed(2)
    image, text = F.normalize(torch.randn(20, 8), dim=-1), F.normalize(torch.randn(3, 5, 8), dim=-1)
    all_scores = scores(image, text, 100.0)
    changed = all_scores.clone()
    changed[:, 1] = torch.randn(20, 5) * 100
    for method in METHODS:
        assert torch.equal(combine(method, all_scores, text, (0, 2)).pred, combine(method, changed, text, (0, 2)).pred)


def test_subsets_and_method_parsing():
    subsets = all_subsets(5)
    assert len(subsets) == 31 and subsets[:2] == [(0,), (1,)] and subsets[-1] == (0, 1, 2, 3, 4)
    assert len(set(subsets)) == 31
    with pytest.raises(ClipzsError, match="limited to 12 templates"):
        all_subsets(13)
    assert parse_methods("all") == list(METHODS)
    assert parse_methods("prob, embedding") == ["prob", "embedding"]
    with pytest.raises(ClipzsError, match="unknown ensemble method"):
        parse_methods("prob,median")


def test_weighted_methods_and_balanced_variants_through_combine():
    torch.manual_seed(3)
    image, text = F.normalize(torch.randn(60, 8), dim=-1), F.normalize(torch.randn(3, 4, 8), dim=-1)
    all_scores = scores(image, text, 100.0)
    all_scores[:, :, 0] += 40.0  # every template favours class 0
    for method in ("prob", "logit", "embedding", "zpe", "carprt"):
        plain = combine(method, all_scores, text, (0, 1, 2))
        balanced = combine(method + "+balanced", all_scores, text, (0, 1, 2))
        assert balanced.scores.sum(dim=1).sub(1).abs().max() < 1e-5, method
        assert balanced.scores.mean(dim=0).sub(0.25).abs().max() < 1e-3, method
        assert (balanced.pred == 0).sum() < (plain.pred == 0).sum(), method


def test_balance_option_adds_variants_of_score_methods_only():
    assert parse_methods("vote,embedding", balance=True) == ["vote", "embedding", "embedding+balanced"]
    assert parse_methods("zpe+balanced") == ["zpe+balanced"]
    with pytest.raises(ClipzsError, match="unknown ensemble method"):
        parse_methods("vote+balanced")
    assert len(parse_methods("all", balance=True)) == len(METHODS) + 5
