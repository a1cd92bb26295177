"""Label-free prompt weighting (ZPE, CARPRT) and class balancing, on synthetic score tensors [N, T, C]."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipzs.ensemble import combine_sums, plan
from clipzs.errors import ClipzsError
from clipzs.scoring import compute_scores as scores
from clipzs.weighting import (
    balance_classes,
    carprt,
    carprt_weights,
    mad_select,
    weighted_embedding,
    weighted_logits,
    zpe,
    zpe_scores,
    zpe_weights,
)

N, C = 2000, 10


def logit_mean(logits: torch.Tensor) -> torch.Tensor:
    """The `logit` ensemble's class scores [N, C] of all templates."""
    return combine_sums("logit", {"logit": logits.sum(dim=1)[None]}, {}, logits.shape[1])[0][0]


def embedding_mean(logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The `embedding` ensemble's class scores [N, C] of all templates, as `ensemble` computes them."""
    norms = plan([("embedding", tuple(range(logits.shape[1])))], text).norms
    return combine_sums("embedding", {"logit": logits.sum(dim=1)[None]}, {}, logits.shape[1], norms)[0][0]


def labels(seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(C, (N,), generator=generator), generator


def prompt(y: torch.Tensor, generator: torch.Generator, signal: float, classes: torch.Tensor | None = None):
    """[N, C] CLIP-like logits around 25: `signal` added to the true class (of `classes` only), unit noise."""
    boost = F.one_hot(y, C).float() * (1.0 if classes is None else classes.float())
    return 25 + signal * boost + torch.randn(N, C, generator=generator)


def accuracy(class_scores: torch.Tensor, y: torch.Tensor) -> float:
    return (class_scores.argmax(dim=1) == y).float().mean().item()


def test_zpe_gives_the_informative_prompt_the_largest_weight_and_beats_the_logit_mean():
    y, g = labels()
    logits = torch.stack([prompt(y, g, 0.0), prompt(y, g, 2.0), *(prompt(y, g, 0.0) for _ in range(3))], dim=1)
    weights = zpe_weights(logits)
    assert weights.shape == (5,)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights.argmax().item() == 1
    assert accuracy(zpe(logits), y) > accuracy(logit_mean(logits), y) + 0.03


def test_zpe_scores_ignore_offsets_that_are_constant_across_images():
    y, g = labels(1)
    noise = prompt(y, g, 0.0)
    constant = noise + 30.0
    per_class = noise + torch.linspace(0.0, 20.0, C)
    logits = torch.stack([prompt(y, g, 2.0), noise, constant, per_class], dim=1)

    naive = logits.amax(dim=2).mean(dim=0)  # Algorithm 1's max-logit score: the offsets would win it
    assert naive.argmax().item() in (2, 3)

    corrected = zpe_scores(logits)
    torch.testing.assert_close(corrected[2], corrected[1], rtol=0, atol=1e-4)
    torch.testing.assert_close(corrected[3], corrected[1], rtol=0, atol=1e-4)
    assert zpe_weights(logits).argmax().item() == 0


def test_zpe_reference_images_keep_half_of_a_test_set_only_shift():
    """A prompt matching every test image (a domain shift absent from the pre-training images) keeps half its
    shift once the correction averages the test mean with the reference mean, and none of it without."""
    y, g = labels(2)
    noise = prompt(y, g, 0.0)
    logits = torch.stack([noise, noise + 10.0], dim=1)
    reference = prompt(y, g, 0.0)[:500, None, :].expand(-1, 2, -1)

    test_only = zpe_scores(logits)
    assert (test_only[1] - test_only[0]).item() == pytest.approx(0.0, abs=1e-4)
    both = zpe_scores(logits, reference)
    assert (both[1] - both[0]).item() == pytest.approx(5.0, abs=1e-4)


def test_mad_select_uses_the_interpolated_median_and_mad():
    # median 2, |deviations| [2, 1, 1, 8] -> MAD 1.5: only 10 is more than 1 MAD above the median
    scores_ = torch.tensor([0.0, 1.0, 3.0, 10.0])
    assert mad_select(scores_, 1.0).tolist() == [False, False, False, True]
    assert mad_select(scores_, 0.5).tolist() == [False, False, True, True]
    assert mad_select(torch.full((4,), 3.0), 2.0).tolist() == [True] * 4


def test_zpe_prompt_selection_zeroes_the_other_prompts():
    y, g = labels(3)
    logits = torch.stack([prompt(y, g, 3.0), *(prompt(y, g, 0.0) for _ in range(8))], dim=1)
    weights = zpe_weights(logits, mad_threshold=2.0)
    assert weights.tolist() == [1.0] + [0.0] * 8
    same = logits[:, :1].expand(-1, 4, -1)
    torch.testing.assert_close(zpe_weights(same, mad_threshold=2.0), torch.full((4,), 0.25))


def test_zpe_temperature_sharpens_the_weights_and_must_be_positive():
    y, g = labels(4)
    logits = torch.stack([prompt(y, g, 2.0), prompt(y, g, 0.0)], dim=1)
    assert zpe_weights(logits, temperature=0.1)[0] > zpe_weights(logits)[0] > 0.5
    with pytest.raises(ClipzsError):
        zpe_weights(logits, temperature=0.0)


def test_weighted_embedding_is_the_renormalised_weighted_text_embedding():
    g = torch.Generator().manual_seed(5)
    image = F.normalize(torch.randn(7, 16, generator=g), dim=-1)
    text = F.normalize(torch.randn(3, 4, 16, generator=g), dim=-1)
    logits = scores(image, text, 100.0)

    torch.testing.assert_close(weighted_embedding(logits, text, torch.full((3,), 1 / 3)), embedding_mean(logits, text))
    for weights in (torch.tensor([0.6, 0.3, 0.1]), torch.rand(3, 4, generator=g)):
        per_class = weights[:, None].expand(3, 4) if weights.ndim == 1 else weights
        classifier = F.normalize(torch.einsum("tc,tcd->cd", per_class, text), dim=-1)
        torch.testing.assert_close(weighted_embedding(logits, text, weights), 100.0 * image @ classifier.T)
        torch.testing.assert_close(
            weighted_logits(logits, weights), 100.0 * image @ torch.einsum("tc,tcd->cd", per_class, text).T
        )


def test_carprt_relevance_is_the_mean_top_logit_of_the_images_each_prompt_assigns():
    logits = torch.tensor(
        [
            [[3.0, 1.0], [1.0, 2.0]],
            [[5.0, 0.0], [0.0, 6.0]],
            [[0.0, 4.0], [0.0, 1.0]],
        ]
    )  # [N=3, T=2, C=2]; template 0 predicts classes 0, 0, 1; template 1 predicts 1, 1, 1
    relevance = [[(3 + 5) / 2, 4.0], [0.0, (2 + 6 + 1) / 3]]  # no image is predicted 0 by template 1
    expected = [
        [math.exp(relevance[0][c]) / (math.exp(relevance[0][c]) + math.exp(relevance[1][c])) for c in range(2)],
        [math.exp(relevance[1][c]) / (math.exp(relevance[0][c]) + math.exp(relevance[1][c])) for c in range(2)],
    ]
    torch.testing.assert_close(carprt_weights(logits), torch.tensor(expected))


def test_carprt_weights_each_class_by_the_prompt_that_knows_it():
    y, g = labels(6)
    first_half = torch.arange(C) < C // 2
    logits = torch.stack([prompt(y, g, 3.0, first_half), prompt(y, g, 3.0, ~first_half)], dim=1)
    weights = carprt_weights(logits)
    assert weights.shape == (2, C)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(C))
    assert bool((weights[0, first_half] > 0.6).all()) and bool((weights[1, ~first_half] > 0.6).all())
    class_aware = accuracy(carprt(logits), y)
    assert class_aware > accuracy(logit_mean(logits), y) + 0.1
    assert class_aware > accuracy(zpe(logits), y) + 0.1


def test_balance_classes_undoes_a_bias_towards_one_class():
    y, g = labels(7)
    clean = prompt(y, g, 3.0)
    biased = clean.clone()
    biased[:, 0] += 3.0
    assert accuracy(biased, y) < accuracy(clean, y) - 0.2

    balanced = balance_classes(biased.softmax(dim=1))
    assert accuracy(balanced, y) == pytest.approx(accuracy(clean, y), abs=0.01)
    torch.testing.assert_close(balanced.mean(dim=0), torch.full((C,), 1 / C), rtol=0, atol=1e-4)
    hard = torch.bincount(balanced.argmax(dim=1), minlength=C) / N
    assert (hard - 1 / C).abs().max().item() < 0.02
    torch.testing.assert_close(balanced.sum(dim=1), torch.ones(N))


def test_balance_classes_reaches_a_given_target_by_rescaling_each_class():
    y, g = labels(8)
    probs = prompt(y, g, 2.0).softmax(dim=1)
    target = torch.linspace(1.0, 3.0, C)
    balanced = balance_classes(probs, target=target)
    torch.testing.assert_close(balanced.mean(dim=0), target / target.sum(), rtol=0, atol=1e-4)
    ratio = balanced / probs  # epsilon = 1: p'(c|x) = p(c|x) v_c / Z(x), so the ratio over classes is per-class
    ratio = ratio / ratio[:, :1]
    torch.testing.assert_close(ratio, ratio[:1].expand(N, -1), rtol=1e-3, atol=0)


def test_balance_classes_leaves_balanced_probabilities_alone():
    y = torch.arange(C).repeat(50)
    probs = (3.0 * F.one_hot(y, C).float()).softmax(dim=1)
    torch.testing.assert_close(balance_classes(probs), probs)


def test_balance_classes_rejects_a_bad_target():
    with pytest.raises(ClipzsError):
        balance_classes(torch.full((4, 3), 1 / 3), target=torch.tensor([1.0, 0.0, 1.0]))
