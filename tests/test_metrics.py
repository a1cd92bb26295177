import math

import pytest
import torch

from clipzs.metrics import mean_per_class_recall, per_class_recall, topk_hits


def test_mean_per_class_recall_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 2])
    recall = per_class_recall(pred, labels, 4)
    assert recall[:3].tolist() == pytest.approx([2 / 3, 1.0, 0.5]) and math.isnan(recall[3])
    assert mean_per_class_recall(pred, labels, 4) == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_topk_hits_mark_labels_among_the_highest_scores():
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.6, 0.1, 0.1, 0.1, 0.1, 0.0]])
    labels = torch.tensor([0, 5])
    assert topk_hits(scores, labels, 1).tolist() == [False, False]
    assert topk_hits(scores, labels, 2).tolist() == [True, False]
    assert topk_hits(scores, labels, 5).tolist() == [True, False]
    assert topk_hits(None, labels, 5) is None
    assert topk_hits(scores[:, :4], labels.clamp(max=3), 5) is None


def test_summarize_gives_every_row_an_interval_around_it_and_a_mcnemar_comparison():
    import torch.nn.functional as F

    from clipzs.ensemble import METHODS, all_subsets
    from clipzs.pipeline import summarize
    from clipzs.results import row_label
    from clipzs.scoring import Features

    torch.manual_seed(0)
    labels = torch.arange(200) % 10
    centres = F.normalize(torch.randn(10, 16), dim=1)
    text = F.normalize(centres + 0.8 * torch.randn(3, 10, 16), dim=2)
    image = F.normalize(centres[labels] + 0.9 * torch.randn(200, 16), dim=1)
    single, ensembles, best, comparisons, bootstrap = summarize(
        Features(image, text, labels, 100.0), METHODS, all_subsets(3), ["a", "b", "c"]
    )
    assert len(single) == 3 and len(ensembles) == 7 * len(METHODS)
    assert (bootstrap.resamples, bootstrap.seed, bootstrap.level, bootstrap.rows) == (1000, 0, 0.95, "all")
    for row in single + ensembles:
        low, high = row.acc1_ci
        assert low <= row.acc1 <= high and high - low > 0
        assert (row.acc5_ci is not None) == (row.acc5 is not None)
        if row.acc5 is not None:
            assert row.acc5_ci[0] <= row.acc5 <= row.acc5_ci[1]
    assert [row.template for row in single] == ["a", "b", "c"]
    (comparison,) = comparisons
    assert comparison.a == f"{best.method}{{{','.join(str(t + 1) for t in best.templates)}}}"
    assert comparison.a == row_label(best.method, best.templates)
    assert best.acc1 == max(row.acc1 for row in ensembles)
    assert (torch.tensor(best.pred) == labels).float().mean().item() == pytest.approx(best.acc1)
    assert comparison.acc1_a >= comparison.acc1_b
    assert comparison.acc1_a - comparison.acc1_b == pytest.approx((comparison.a_only - comparison.b_only) / 200)
    assert 0 < comparison.p_value <= 1
