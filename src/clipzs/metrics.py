"""Classification metrics from predictions [N], class scores [N, C] and labels [N] (accuracies are means of
per-image hits, fractions in [0, 1]); bootstrap confidence intervals and McNemar's paired test from
per-image outcomes [N]."""

from __future__ import annotations

import torch

from .errors import ClipzsError

_BOOTSTRAP_BLOCK = 1 << 22  # resampled indices drawn at once (32 MiB of int64)
_QUANTILE_ROWS = 4096  # rows whose resampled means are sorted at once
MAX_RESAMPLES = 1_000_000  # far beyond what a percentile interval needs (1,000 is the usual count)
MAX_SEED = 2**63 - 1  # what both torch's and numpy's generators take


def check_bootstrap(resamples: int, seed: int) -> None:
    """Refuse, before any work, a resample count or a seed the bootstrap cannot use."""
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ClipzsError(f"resamples must be 1 to {MAX_RESAMPLES:,}, got {resamples}", parameter="resamples")
    if not 0 <= seed <= MAX_SEED:
        raise ClipzsError(f"seed must be 0 to 2**63 - 1, got {seed}", parameter="seed")


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


class Resamples:
    """The bootstrap's resamples of N images: counts [S, N], how often each image is drawn in each resample.

    Images are drawn with replacement, `count` times, from a generator seeded with `seed`, so intervals are
    reproducible and paired across rows (every row is resampled with the same draws). A resampled accuracy is
    (counts @ hits) / N, so any number of rows costs one matrix product, a block of images at a time, and the
    per-image hits of all rows are never held at once. Percentile intervals (Efron & Tibshirani, An Introduction
    to the Bootstrap, 1993, ch. 13).
    """

    def __init__(self, n: int, count: int = 1000, seed: int = 0):
        if n < 1:
            raise ClipzsError(f"bootstrap needs at least one image, got {n}")
        check_bootstrap(count, seed)
        self.n, self.count, self.seed = n, count, seed
        generator = torch.Generator().manual_seed(seed)
        block = max(1, _BOOTSTRAP_BLOCK // n)
        try:  # counts <= n, and beyond 32767 images ~ Poisson(1): int16 holds them
            self.counts = torch.empty(count, n, dtype=torch.int16)
        except RuntimeError as e:
            raise ClipzsError(
                f"the bootstrap's {count:,} resamples of {n:,} images need {2 * count * n / 2**30:.1f} GiB; "
                "use fewer resamples",
                parameter="resamples",
            ) from e
        for start in range(0, count, block):
            draws = torch.randint(n, (min(block, count - start), n), generator=generator)
            ones = torch.ones(draws.shape, dtype=torch.int16)
            self.counts[start : start + len(draws)] = torch.zeros(draws.shape, dtype=torch.int16).scatter_add_(
                1, draws, ones
            )
        self.small_counts = int(self.counts.max()) <= 127  # int8 holds them

    def sums(self, hits: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Each resample's sum [R, S] of per-image hits [R, stop - start] (bool) of images start:stop: an integer
        matrix product (int8 in, int32 out, exact), or a float32 one (exact too: small integers) where torch has
        no integer product for these shapes."""
        counts = self.counts[:, start:stop]
        if self.small_counts:
            try:
                return torch._int_mm(hits.to(torch.int8), counts.to(torch.int8).T.contiguous())
            except RuntimeError:  # shapes or a build without it
                pass
        return hits.float() @ counts.float().T

    def intervals(self, sums: torch.Tensor, level: float = 0.95) -> torch.Tensor:
        """Intervals [R, 2] (low, high) of the means whose resampled sums are `sums` [R, S]: the (1 - level) / 2
        and (1 + level) / 2 quantiles of sums / N over the resamples."""
        if not 0 < level < 1:
            raise ClipzsError(f"bootstrap level must be between 0 and 1, got {level}")
        tail = (1 - level) / 2
        q = torch.tensor([tail, 1 - tail], dtype=torch.float64)
        out = torch.empty(len(sums), 2, dtype=torch.float64)
        for start in range(0, len(sums), _QUANTILE_ROWS):
            means = sums[start : start + _QUANTILE_ROWS].double() / self.n
            out[start : start + len(means)] = means.quantile(q, dim=1).T
        return out


def bootstrap_cis(values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> torch.Tensor:
    """Percentile-bootstrap confidence intervals [R, 2] (low, high) for the means of R per-image columns [N, R]
    (see `Resamples`)."""
    columns = values.reshape(values.shape[0], -1).double().cpu()
    resamples = Resamples(columns.shape[0], n_boot, seed)
    return resamples.intervals((resamples.counts.double() @ columns).T, level)


def bootstrap_ci(correct: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval (low, high) for the accuracy of per-image outcomes [N]
    (bool, 0/1, or any per-image value whose mean is wanted); see `Resamples`."""
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
