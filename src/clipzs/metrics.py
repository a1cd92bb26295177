"""Classification metrics from predictions [N], class scores [N, C] and labels [N] (accuracies are means of
per-image hits, fractions in [0, 1]); bootstrap confidence intervals and McNemar's paired test from
per-image outcomes [N]."""

from __future__ import annotations

import torch

from .errors import ClipzsError

_BOOTSTRAP_BLOCK = 1 << 22  # resampled indices held at once (32 MiB of int64)


def topk_hits(class_scores: torch.Tensor | None, labels: torch.Tensor, k: int = 5) -> torch.Tensor | None:
    """Whether each image's label is among its k highest scores [N]; None without scores or with < k classes."""
    if class_scores is None or class_scores.shape[1] < k:
        return None
    return (class_scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def per_class_recall(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Recall of each class [C] (NaN for classes without images)."""
    hits = torch.zeros(num_classes).index_add_(0, labels, (pred == labels).float())
    counts = torch.bincount(labels, minlength=num_classes).float()
    return hits / counts


def mean_per_class_recall(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean recall over the classes that have images (balanced accuracy)."""
    return per_class_recall(pred, labels, num_classes).nanmean().item()


def bootstrap_cis(values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> torch.Tensor:
    """Percentile-bootstrap confidence intervals [R, 2] (low, high) for the means of R per-image columns [N, R].

    Every column is resampled with the same draws (images with replacement, `n_boot` times, from a generator
    seeded with `seed`, so intervals are reproducible and paired across methods); the bounds are the
    (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled means (Efron & Tibshirani, An Introduction
    to the Bootstrap, 1993, ch. 13). A resample is a count per image, so all columns cost one matrix product;
    resamples are drawn in blocks to bound memory.
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ClipzsError(f"bootstrap needs n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    columns = values.reshape(values.shape[0], -1).double().cpu()
    n = columns.shape[0]
    assert n > 0, "bootstrap of an empty set of images"
    generator = torch.Generator().manual_seed(seed)
    block = max(1, _BOOTSTRAP_BLOCK // n)
    means = []
    for start in range(0, n_boot, block):
        draws = torch.randint(n, (min(block, n_boot - start), n), generator=generator)
        counts = torch.zeros(draws.shape, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(draws.shape, dtype=torch.float64)
        )
        means.append(counts @ columns / n)
    tail = (1 - level) / 2
    return torch.cat(means).quantile(torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0).T


def bootstrap_ci(correct: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval (low, high) for the accuracy of per-image outcomes [N]
    (bool, 0/1, or any per-image value whose mean is wanted); see `bootstrap_cis`."""
    low, high = bootstrap_cis(correct.reshape(-1, 1), n_boot, seed, level)[0].tolist()
    return low, high


def mcnemar(correct_a: torch.Tensor, correct_b: torch.Tensor) -> dict[str, int | float]:
    """Exact McNemar test of two classifiers on the same images [N]: are their error rates different?

    b = images A gets right and B wrong, c = images A gets wrong and B right. Under the null hypothesis each
    discordant image is equally likely to go either way, so b ~ Binomial(b + c, 1/2); the two-sided p-value
    is 2 * P(X <= min(b, c)), capped at 1 (and 1 when there are no discordant images), computed exactly with
    integers (McNemar, Psychometrika 1947; the exact conditional form, e.g. Fagerland et al., BMC Medical
    Research Methodology 2013).
    """
    a = correct_a.reshape(-1).bool()
    other = correct_b.reshape(-1).bool()
    assert a.shape == other.shape, (correct_a.shape, correct_b.shape)
    b = int((a & ~other).sum())
    c = int((~a & other).sum())
    n = b + c
    term = tail = 1  # C(n, 0), then C(n, k) from C(n, k - 1) exactly, as a running product
    for k in range(1, min(b, c) + 1):
        term = term * (n - k + 1) // k
        tail += term
    p_value = min(1.0, 2 * tail / 2**n)
    return {"b": b, "c": c, "p_value": p_value}
