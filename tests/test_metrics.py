import math

import pytest
import torch

from clipzs.metrics import classification_metrics, mean_per_class_recall, per_class_recall, top1, topk


def test_top1_top5_and_mean_per_class_recall_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 2])
    assert top1(pred, labels) == pytest.approx(4 / 6)
    recall = per_class_recall(pred, labels, 4)
    assert recall[:3].tolist() == pytest.approx([2 / 3, 1.0, 0.5]) and math.isnan(recall[3])
    assert mean_per_class_recall(pred, labels, 4) == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_topk_counts_label_among_highest_scores():
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.6, 0.1, 0.1, 0.1, 0.1, 0.0]])
    labels = torch.tensor([0, 5])
    assert topk(scores, labels, 1) == 0.0
    assert topk(scores, labels, 2) == 0.5
    assert topk(scores, labels, 5) == 0.5
    assert topk(None, labels, 5) is None
    assert topk(scores[:, :4], labels.clamp(max=3), 5) is None


def test_classification_metrics_reports_null_top5_for_votes():
    labels, pred = torch.tensor([1, 0]), torch.tensor([1, 1])
    assert classification_metrics(pred, None, labels, 2) == {"acc1": 0.5, "acc5": None, "mean_per_class_recall": 0.5}
