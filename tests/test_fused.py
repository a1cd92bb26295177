"""`fused`: the compiled kernel gives `ensemble.evaluate_block`'s hits, label ranks and predictions bit for bit, ties
included, and `score_rows` through it gives the same tallies as through torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipzs import fused, scoring
from clipzs.ensemble import METHODS, SINGLE, Weights, all_subsets, evaluate_block, plan
from clipzs.metrics import Resamples
from clipzs.selection import greedy_forward
from clipzs.weighting import softmax_multipliers

B, T, C = 37, 6, 9


def block(kind: str, generator: torch.Generator) -> torch.Tensor:
    """Scores [B, T, C]: exact ties everywhere ("ties"), softmax probabilities that underflow to tied zeros
    ("underflow"), or plain random ones."""
    scores = torch.randn(B, T, C, generator=generator)
    if kind == "ties":
        return (scores * 30).round() / 4
    return scores * 300 if kind == "underflow" else scores * 5


@pytest.mark.parametrize("kind", ["ties", "underflow", "random"])
@pytest.mark.parametrize("want_pred", [True, False])
def test_the_kernel_ranks_every_method_as_torch_does(kind, want_pred):
    generator = torch.Generator().manual_seed(len(kind))
    scores = block(kind, generator)
    labels = torch.randint(C, (B,), generator=generator)
    text = F.normalize(torch.randn(T, C, 16, generator=generator), dim=-1)
    weights = Weights(
        zpe=softmax_multipliers(torch.randn(T, generator=generator)),
        carprt=softmax_multipliers(torch.randn(T, C, generator=generator)),
    )
    rows = [(SINGLE, (t,)) for t in range(T)] + [(m, s) for m in METHODS for s in all_subsets(T)]
    rows_plan = plan(rows, text)
    expected = evaluate_block(scores, labels, rows_plan, weights, want_pred=want_pred)
    got = fused.evaluate_block(scores, labels, rows_plan, weights, want_pred=want_pred)
    assert torch.equal(got.hit1, expected.hit1)
    assert torch.equal(got.above, expected.above)
    if want_pred:
        assert torch.equal(got.pred, expected.pred)
        assert len(set(got.pred.flatten().tolist())) == C  # not degenerate
    else:
        assert got.pred is None
    top = got.above[len(rows) - len(all_subsets(T))]  # a ranked row: some labels are beaten, some win
    assert 0 < int((top == 0).sum()) < B


def test_score_rows_through_the_kernel_gives_torchs_tallies(monkeypatch):
    generator = torch.Generator().manual_seed(4)
    n = 150
    labels = torch.arange(n) % C
    centres = F.normalize(torch.randn(C, 16, generator=generator), dim=1)
    image = F.normalize(centres[labels] + torch.randn(n, 16, generator=generator), dim=1)
    text = F.normalize(centres + torch.randn(T, C, 16, generator=generator), dim=2)
    features = scoring.Features(image, text, labels, 100.0)
    rows = [(SINGLE, (t,)) for t in range(T)] + [(m, s) for m in METHODS for s in all_subsets(T)]
    draws = Resamples(n, 40, seed=3)
    monkeypatch.setattr(fused, "MIN_ADDENDS", 1 << 62)
    expected = scoring.score_rows(scoring.Scores(features, block=64), rows, draws, keep_pred=True)
    monkeypatch.setattr(fused, "MIN_ADDENDS", 0)
    calls, run = [], fused._run
    monkeypatch.setattr(fused, "_run", lambda *arguments: calls.append(arguments) or run(*arguments))
    got = scoring.score_rows(scoring.Scores(features, block=64, held_bytes=0), rows, draws, keep_pred=True)
    assert calls  # the kernel ran
    for name in ("hits1", "hits5", "per_class", "boot1", "boot5", "pred"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.parametrize("method", ["logit", "prob", "embedding", "zpe", "carprt"])
def test_greedy_selection_through_the_kernel_takes_torchs_path(monkeypatch, method):
    """The same templates chosen with the same accuracies at every step: the kernel sums each candidate in the
    order chosen, as the running sums do."""
    generator = torch.Generator().manual_seed(7)
    n, templates = 120, 7
    labels = torch.arange(n) % C
    centres = F.normalize(torch.randn(C, 16, generator=generator), dim=1)
    image = F.normalize(centres[labels] + 1.5 * torch.randn(n, 16, generator=generator), dim=1)
    text = F.normalize(centres + torch.randn(templates, C, 16, generator=generator), dim=2)
    scores = scoring.Scores(scoring.Features(image, text, labels, 100.0), block=48)
    monkeypatch.setattr(fused, "MIN_ADDENDS", 1 << 62)
    expected = greedy_forward(method, scores)
    monkeypatch.setattr(fused, "MIN_ADDENDS", 0)
    calls, run = [], fused._run
    monkeypatch.setattr(fused, "_run", lambda *arguments: calls.append(arguments) or run(*arguments))
    assert greedy_forward(method, scores) == expected
    kernels = [call[0] for call in calls]
    assert kernels.count("candidate_hits") == templates * 3  # every step, every block of 48 images
    assert kernels.count("weight_statistics") == (3 if method in ("zpe", "carprt") else 0)  # the fit's pass
    assert len({accuracy for _, accuracy in expected}) > 2  # not degenerate


def test_without_a_folder_to_cache_in_the_kernels_are_compiled_in_each_process(monkeypatch):
    import importlib

    import numba

    from clipzs import kernels

    real = numba.njit

    def njit(**options):
        if options.get("cache"):  # what numba raises when no cache folder is writable
            raise RuntimeError("cannot cache function 'rank': no locator available for file")
        return real(**options)

    monkeypatch.setattr(numba, "njit", njit)
    try:
        reloaded = importlib.reload(kernels)
        assert type(reloaded.rank_level._cache).__name__ == "NullCache"
        assert reloaded.rank(np.float32([1, 3, 3]), np.float32([1, 1, 1]), 2) == (0, 1)  # compiled, and runs
    finally:
        monkeypatch.undo()
        assert type(importlib.reload(kernels).rank_level._cache).__name__ == "FunctionCache"


def test_weight_statistics_are_torchs_ties_included():
    generator = torch.Generator().manual_seed(9)
    scores = block("ties", generator)
    mu = torch.randn(T, C, generator=generator).round()
    corrected, top, pred = fused.weight_statistics(scores, mu)
    assert torch.equal(corrected, (scores - mu).amax(dim=2))
    expected_top, expected_pred = scores.max(dim=2)
    assert torch.equal(top, expected_top) and torch.equal(pred, expected_pred)
    assert int((scores == expected_top[..., None]).sum()) > B * T  # tied tops, where the first must be taken
    assert fused.weight_statistics(scores, None)[0] is None
