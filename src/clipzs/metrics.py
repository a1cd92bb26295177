"""Classification metrics as fractions in [0, 1], from predictions [N], class scores [N, C] and labels [N]."""

from __future__ import annotations

import torch


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose prediction is the label."""
    return (pred == labels).float().mean().item()


def topk(class_scores: torch.Tensor | None, labels: torch.Tensor, k: int = 5) -> float | None:
    """Fraction of images whose label is among the k highest scores; None without scores or with < k classes."""
    if class_scores is None or class_scores.shape[1] < k:
        return None
    best = class_scores.topk(k, dim=1).indices
    return (best == labels[:, None]).any(dim=1).float().mean().item()


def per_class_recall(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Recall of each class [C] (NaN for classes without images)."""
    hits = torch.zeros(num_classes).index_add_(0, labels, (pred == labels).float())
    counts = torch.bincount(labels, minlength=num_classes).float()
    return hits / counts


def mean_per_class_recall(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean recall over the classes that have images (balanced accuracy)."""
    return per_class_recall(pred, labels, num_classes).nanmean().item()


def classification_metrics(
    pred: torch.Tensor, class_scores: torch.Tensor | None, labels: torch.Tensor, num_classes: int
) -> dict[str, float | None]:
    """acc1, acc5 (None for vote methods) and mean per-class recall."""
    return {
        "acc1": top1(pred, labels),
        "acc5": topk(class_scores, labels, 5),
        "mean_per_class_recall": mean_per_class_recall(pred, labels, num_classes),
    }
