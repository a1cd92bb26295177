"""Bootstrap confidence intervals and the exact McNemar test."""

import math

import pytest
import torch

from clipzs.errors import ClipzsError
from clipzs.metrics import bootstrap_ci, mcnemar


def outcomes(n: int, right: int) -> torch.Tensor:
    """[n] bool with exactly `right` True values, spread out."""
    correct = torch.zeros(n, dtype=torch.bool)
    correct[torch.randperm(n, generator=torch.Generator().manual_seed(n))[:right]] = True
    return correct


@pytest.mark.parametrize(("n", "right"), [(50, 30), (400, 380), (1000, 700), (30, 30)])
def test_bootstrap_interval_contains_the_accuracy(n, right):
    low, high = bootstrap_ci(outcomes(n, right))
    assert 0.0 <= low <= right / n <= high <= 1.0


def test_bootstrap_is_reproducible_for_a_seed():
    correct = outcomes(300, 200)
    assert bootstrap_ci(correct, seed=3) == bootstrap_ci(correct, seed=3)
    assert bootstrap_ci(correct, seed=3) != bootstrap_ci(correct, seed=4)


def test_bootstrap_interval_shrinks_with_more_images():
    low_small, high_small = bootstrap_ci(outcomes(100, 70))
    low_large, high_large = bootstrap_ci(outcomes(10_000, 7_000))
    assert high_large - low_large < (high_small - low_small) / 5


def test_bootstrap_width_matches_the_binomial_standard_error():
    n, p = 2000, 0.7
    low, high = bootstrap_ci(outcomes(n, int(p * n)), n_boot=2000)
    normal_width = 2 * 1.959964 * math.sqrt(p * (1 - p) / n)
    assert high - low == pytest.approx(normal_width, rel=0.15)
    narrow_low, narrow_high = bootstrap_ci(outcomes(n, int(p * n)), n_boot=2000, level=0.5)
    assert low < narrow_low < p < narrow_high < high


@pytest.mark.parametrize(("n_boot", "level"), [(0, 0.95), (100, 1.0), (100, 0.0)])
def test_bootstrap_rejects_bad_arguments(n_boot, level):
    with pytest.raises(ClipzsError):
        bootstrap_ci(outcomes(10, 5), n_boot=n_boot, level=level)


def paired(both: int, only_a: int, only_b: int, neither: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return torch.tensor(a), torch.tensor(b)


def test_mcnemar_matches_a_hand_computed_binomial():
    a, b = paired(both=5, only_a=1, only_b=6, neither=3)
    # b = 1, c = 6: p = 2 * (C(7, 0) + C(7, 1)) / 2^7 = 2 * (1 + 7) / 128
    assert mcnemar(a, b) == {"b": 1, "c": 6, "p_value": pytest.approx(2 * (1 + 7) / 128)}
    assert mcnemar(a, b)["p_value"] == pytest.approx(0.125)
    swapped = mcnemar(b, a)
    assert (swapped["b"], swapped["c"]) == (6, 1)
    assert swapped["p_value"] == pytest.approx(0.125)


def test_mcnemar_extremes():
    assert mcnemar(*paired(both=4, only_a=0, only_b=10, neither=2))["p_value"] == pytest.approx(2 / 2**10)
    assert mcnemar(*paired(both=4, only_a=3, only_b=3, neither=2))["p_value"] == 1.0
    assert mcnemar(*paired(both=4, only_a=0, only_b=0, neither=2)) == {"b": 0, "c": 0, "p_value": 1.0}


def test_mcnemar_agrees_with_the_binomial_sum_for_more_discordant_pairs():
    result = mcnemar(*paired(both=200, only_a=37, only_b=58, neither=40))
    n = 37 + 58
    expected = 2 * sum(math.comb(n, k) for k in range(38)) / 2**n
    assert result["p_value"] == pytest.approx(expected, rel=1e-12)
    assert 0.01 < result["p_value"] < 0.05


def test_resamples_are_counts_of_draws_seeded_and_paired():
    from clipzs.metrics import Resamples, bootstrap_cis

    draws = Resamples(50, 200, seed=5)
    assert draws.counts.shape == (200, 50) and bool((draws.counts.sum(dim=1) == 50).all())
    assert torch.equal(draws.counts, Resamples(50, 200, seed=5).counts)
    assert not torch.equal(draws.counts, Resamples(50, 200, seed=6).counts)
    # a resample's sum is its counts times the hits; blocks of images add up to the whole (what scoring a
    # block at a time relies on), in the integer product and the float one alike
    hits = torch.stack([outcomes(50, 30), outcomes(50, 10)]).bool()  # [R, N]
    whole = draws.sums(hits, 0, 50)
    assert torch.equal(whole.long(), (hits.double() @ draws.counts.double().T).long())
    assert torch.equal(whole, draws.sums(hits[:, :20], 0, 20) + draws.sums(hits[:, 20:], 20, 50))
    draws.small_counts = False
    assert torch.equal(draws.sums(hits, 0, 50).long(), whole.long())
    intervals = draws.intervals(whole, 0.9)
    assert torch.equal(intervals, bootstrap_cis(hits.T.float(), n_boot=200, seed=5, level=0.9))
    mean = hits.double().mean(dim=1)
    assert bool((intervals[:, 0] <= mean).all()) and bool((mean <= intervals[:, 1]).all())
    with pytest.raises(ClipzsError):
        draws.intervals(whole, 1.5)
