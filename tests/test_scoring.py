"""`scoring`: blocked and streamed scores give the in-memory results bit for bit, and the weighted and balanced
methods agree with `weighting`'s reference formulas on a small [N, T, C]."""

import pytest
import torch
import torch.nn.functional as F

from clipzs.ensemble import METHODS, SINGLE, VOTE_METHODS, all_subsets
from clipzs.metrics import Resamples
from clipzs.scoring import TILE, Features, Scores, compute_scores, predictions, score_rows
from clipzs.weighting import balance_classes, carprt, weighted_embedding, zpe

N, T, C, D = 200, 5, 10, 16
BLOCK = 64  # forced block size: several blocks, the last one partial
SCORE_METHODS = [m for m in METHODS if m not in VOTE_METHODS]


@pytest.fixture(scope="module")
def features() -> Features:
    """Images near their class centre; templates of differing quality, one favouring class 0 for every image."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(C, D, generator=g), dim=1)
    labels = torch.arange(N) % C
    common = F.normalize(torch.randn(D, generator=g), dim=0)
    image = F.normalize(centres[labels] + 0.9 * torch.randn(N, D, generator=g) + 0.6 * common, dim=1)
    noise = torch.tensor([0.4, 0.8, 1.2, 0.6, 1.0])[:, None, None]
    text = F.normalize(centres + noise * torch.randn(T, C, D, generator=g), dim=2)
    text[2, 0] = F.normalize(centres[0] + 1.5 * common, dim=0)
    return Features(image, text, labels, 100.0)


def rows_of_a_sweep() -> list:
    subsets = all_subsets(T)
    rows = [(SINGLE, (t,)) for t in range(T)] + [(m, s) for m in METHODS for s in subsets]
    # balanced rows need Sinkhorn over every image: a few subsets of each score method
    return rows + [(m + "+balanced", s) for m in SCORE_METHODS for s in (subsets[0], subsets[7], subsets[-1])]


def test_scores_of_an_image_do_not_depend_on_its_block(features):
    whole = compute_scores(features.image, features.text, 100.0)
    assert whole.shape == (N, T, C)
    for start, stop in [(0, 1), (3, 70), (64, 128), (150, 200)]:
        part = compute_scores(features.image[start:stop], features.text, 100.0)
        assert torch.equal(part, whole[start:stop]), (start, stop)
        room = torch.full((TILE * T * C,), torch.nan)  # room for a whole padded tile: its product goes there
        assert torch.equal(compute_scores(features.image[start:stop], features.text, 100.0, out=room), part)
    direct = 100.0 * torch.einsum("nd,tcd->ntc", features.image, features.text)
    torch.testing.assert_close(whole, direct, rtol=0, atol=1e-4)


def test_blocked_and_streamed_scoring_equal_in_memory_scoring(features):
    rows = rows_of_a_sweep()
    draws = Resamples(N, 100, seed=1)
    whole = Scores(features, block=N)
    assert whole.held is not None and len(list(whole.blocks())) == 1
    blocked = Scores(features, block=BLOCK)
    streamed = Scores(features, block=BLOCK, held_bytes=0)
    assert streamed.held is None and len(list(streamed.blocks())) == 4
    expected = score_rows(whole, rows, draws, keep_pred=True)
    assert expected.hits1.sum() > 0 and len(set(expected.pred[-1].tolist())) > 3  # not degenerate
    for scores in (blocked, streamed):
        got = score_rows(scores, rows, draws, keep_pred=True)
        for name in ("hits1", "hits5", "per_class", "boot1", "boot5", "pred"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
    # the tallies are the predictions' counts
    hits = expected.pred == features.labels
    assert torch.equal(expected.hits1, hits.sum(dim=1))
    assert torch.equal(expected.boot1, (hits.double() @ draws.counts.double().T).long())
    assert torch.equal(predictions(streamed, rows[-3:]), expected.pred[-3:])


def test_tallies_without_predictions_are_the_same_counts(features):
    rows = rows_of_a_sweep()[::7]
    draws = Resamples(N, 50, seed=2)
    kept = score_rows(Scores(features, block=BLOCK), rows, draws, keep_pred=True)
    counted = score_rows(Scores(features, block=BLOCK, held_bytes=0), rows, draws, keep_pred=False)
    assert counted.pred is None
    for name in ("hits1", "hits5", "per_class", "boot1", "boot5"):
        assert torch.equal(getattr(counted, name), getattr(kept, name)), name


def reference(method: str, logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, C] of a score method from `weighting`'s in-memory formulas (and plain means)."""
    base = method.removesuffix("+balanced")
    if base == "prob":
        probs = logits.softmax(dim=2).mean(dim=1)
    else:
        class_scores = {
            "logit": lambda: logits.mean(dim=1),
            "embedding": lambda: weighted_embedding(logits, text, torch.full((logits.shape[1],), 1.0)),
            "zpe": lambda: zpe(logits),
            "carprt": lambda: carprt(logits),
        }[base]()
        probs = class_scores.softmax(dim=1)
    return balance_classes(probs) if method.endswith("+balanced") else probs


@pytest.mark.parametrize("method", ["zpe", "carprt", *(m + "+balanced" for m in SCORE_METHODS)])
def test_weighted_and_balanced_predictions_equal_the_reference_formulas(features, method):
    """ZPE's and CARPRT's weights of a template depend on that template's scores alone, so a subset's reference is
    the formula applied to the subset's scores."""
    logits = compute_scores(features.image, features.text, features.logit_scale)
    subsets = [(0, 1, 2, 3, 4), (1, 3), (0, 2, 4), (2,)]
    got = predictions(Scores(features, block=BLOCK), [(method, s) for s in subsets])
    for subset, pred in zip(subsets, got, strict=True):
        expected = reference(method, logits[:, list(subset)], features.text[list(subset)]).argmax(dim=1)
        mismatches = int((pred != expected).sum())
        assert mismatches == 0, f"{method}{subset}: {mismatches} of {N} predictions differ"
    if method.endswith("+balanced"):  # the balancing changes something here, so the comparison can fail
        plain = predictions(Scores(features), [(method.removesuffix("+balanced"), subsets[0])])[0]
        assert not torch.equal(plain, got[0])
        assert (got[0] == 0).sum() < (plain == 0).sum()
