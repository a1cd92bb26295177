"""Label-free prompt weighting and class-prior correction, as pure functions of the scores tensor.

scores [N, T, C] = logit_scale * cos(image n, prompt of template t for class c), computed on the unlabeled
evaluation images. Nothing here reads labels: weights are estimated from the images' scores alone, which is
the transductive setting of the papers followed (every image of the evaluated set is available at once).

- ZPE (Allingham et al., ICML 2023): one weight per template, from bias-corrected max-logit scores.
- CARPRT (ICLR 2026): one weight per (template, class), from the mean top logit of the images each
  template assigns to that class.
- Class balancing: rescale any method's class probabilities [N, C] so that their mean over the images
  matches a target class marginal (uniform by default), by Sinkhorn iterations on the OTTER transport problem.
"""

from __future__ import annotations

import math

import torch

from .errors import ClipzsError


def _check_scores(logits: torch.Tensor) -> None:
    assert logits.ndim == 3 and logits.shape[0] > 0, logits.shape


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ClipzsError(f"temperature must be positive, got {temperature}")


def weighted_logits(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over templates of logits [N, T, C] -> [N, C], with weights [T] or per-class weights [T, C].

    With weights that sum to 1 over templates this is a weighted logit mean; it is also the logit of the
    weighted sum of the (scaled, unit-norm) text embeddings, since logits are linear in the text embedding.
    """
    _check_scores(logits)
    weights = weights.to(logits.dtype)
    if weights.ndim == 1:
        assert weights.shape[0] == logits.shape[1], (weights.shape, logits.shape)
        return torch.einsum("ntc,t->nc", logits, weights)
    assert weights.shape == logits.shape[1:], (weights.shape, logits.shape)
    return torch.einsum("ntc,tc->nc", logits, weights)


def weighted_embedding(logits: torch.Tensor, text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Logits [N, C] against the renormalised weighted text embedding of each class, as in CLIP's ensemble.

    With unit-norm features, scale * <x, normalize(sum_t a_tc w_tc)> = sum_t a_tc logits[:, t, c] / ||sum_t a_tc w_tc||,
    so it is computed from logits [N, T, C], text features [T, C, D] and weights a of shape [T] or [T, C],
    without the images. With equal weights it equals `ensemble.embedding_mean`.
    """
    _check_scores(logits)
    assert text.ndim == 3 and text.shape[:2] == logits.shape[1:], (text.shape, logits.shape)
    per_class = weights.to(logits.dtype).expand(logits.shape[2], -1).T if weights.ndim == 1 else weights
    norms = torch.einsum("tc,tcd->cd", per_class.to(text.dtype), text).norm(dim=-1)
    return weighted_logits(logits, per_class) / norms.to(logits.dtype)


def zpe_scores(logits: torch.Tensor, reference_logits: torch.Tensor | None = None) -> torch.Tensor:
    """ZPE prompt scores [T]: mean over images of the top bias-corrected logit of each template.

    Allingham et al. 2023, Section 3 and Algorithm 2: the max-logit score of Algorithm 1 is overconfident for
    templates whose logits are high for every image (word-frequency bias from pre-training, concepts shared by
    the test images), so each logit is first normalised by the template's average logit for that class,
    l[n,t,c] - mean over images of l[., t, c]. The paper averages that mean over two image sets, the test
    images and a sample of pre-training images (20k LAION-400m images); pass the latter's scores as
    `reference_logits` [M, T, C] to get exactly that, or leave it out to correct with the test images only
    (the paper's "test" ablation, all that cached test-set scores allow). Either way a template that only adds
    a class-dependent offset, constant across images, to another template's logits gets that template's score.
    """
    _check_scores(logits)
    mean = logits.mean(dim=0)
    if reference_logits is not None:
        _check_scores(reference_logits)
        assert reference_logits.shape[1:] == logits.shape[1:], (reference_logits.shape, logits.shape)
        mean = 0.5 * (mean + reference_logits.mean(dim=0))
    return (logits - mean).amax(dim=2).mean(dim=0)


def mad_select(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """ZPE prompt selection [T] bool: templates whose score lies more than `threshold` MADs above the median.

    The paper's "ZPE (prompt selection)" rows keep only these outlying high-scoring prompts, with thresholds
    0.5 (ImageNet and its variants) and 2.0 (fine-grained datasets) chosen in its sweep over 0.1-2.5. The
    median and the median absolute deviation are interpolated as numpy/scipy compute them. If no template
    passes (for instance all scores equal), all are kept, so an ensemble is always defined.
    """
    median = scores.quantile(0.5)
    mad = (scores - median).abs().quantile(0.5)
    keep = (scores - median) > threshold * mad
    return keep if keep.any() else torch.ones_like(keep)


def zpe_weights(
    logits: torch.Tensor,
    reference_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    mad_threshold: float | None = None,
) -> torch.Tensor:
    """ZPE template weights [T] (summing to 1) from the unlabeled images' logits [N, T, C].

    weights = softmax(zpe_scores / temperature) over templates. The paper and its released notebook use
    temperature 1 on CLIP's logits (logit_scale 100), which is the default here. With `mad_threshold`, the
    softmax runs over the templates `mad_select` keeps and the others get weight 0 (the paper's prompt
    selection variant); without it every template is weighted (the paper's "weighted average" variant).
    """
    _check_temperature(temperature)
    scores = zpe_scores(logits, reference_logits)
    if mad_threshold is not None:
        scores = scores.masked_fill(~mad_select(scores, mad_threshold), -torch.inf)
    return (scores / temperature).softmax(dim=0)


def zpe(
    logits: torch.Tensor,
    text: torch.Tensor | None = None,
    reference_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    mad_threshold: float | None = None,
) -> torch.Tensor:
    """ZPE ensemble: class scores [N, C] from logits [N, T, C] combined with `zpe_weights`.

    Following the authors' code, the weighted ensemble is a weighted mean of the templates' logits, which is
    the logit of the weighted sum of the scaled unit-norm text embeddings, not renormalised (Figure 1 of the
    paper: "the final text representation is a weighted ensemble"). Given text features [T, C, D], the
    weighted sum is renormalised instead, as CLIP's `embedding` ensemble does; that variant is clipzs's, not
    the paper's, and changes predictions only through the per-class norms.
    """
    weights = zpe_weights(logits, reference_logits, temperature, mad_threshold)
    return weighted_logits(logits, weights) if text is None else weighted_embedding(logits, text, weights)


def carprt_weights(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CARPRT per-(template, class) weights [T, C] from the unlabeled images' logits [N, T, C].

    CARPRT (Class-Aware Zero-Shot Prompt Reweighting, ICLR 2026, openreview.net/forum?id=AScQDQqVXY): the
    relevance of template t to class c is the mean, over the images that template t predicts as c, of their
    top logit under t; the relevances are then normalised over templates by a softmax at `temperature`
    (1 in the official code, tmlr-group/CARPRT, which this follows). A (t, c) pair with no image predicted
    gets relevance 0, as in that code; with CLIP's positive logits at scale 100 this leaves it almost no
    weight, and a class no template predicts gets equal weights. Unlike ZPE's score, the relevance is not
    bias-corrected: a template that adds a constant to all of its logits raises its own weight.
    """
    _check_scores(logits)
    _check_temperature(temperature)
    num_templates, num_classes = logits.shape[1:]
    top, pred = logits.max(dim=2)
    sums = logits.new_zeros(num_templates, num_classes).scatter_add_(1, pred.T, top.T)
    counts = logits.new_zeros(num_templates, num_classes).scatter_add_(1, pred.T, torch.ones_like(top.T))
    relevance = sums / counts.clamp(min=1)
    return (relevance / temperature).softmax(dim=0)


def carprt(logits: torch.Tensor, text: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """CARPRT ensemble: class scores [N, C], each class's logit a `carprt_weights`-weighted mean over templates.

    As in the official code, the per-class weighted sum of the scaled text embeddings is not renormalised,
    which is the weighted logit mean; given text features [T, C, D] it is renormalised instead (clipzs's
    `embedding`-style variant, not the paper's).
    """
    weights = carprt_weights(logits, temperature)
    return weighted_logits(logits, weights) if text is None else weighted_embedding(logits, text, weights)


def sinkhorn_dual(
    probs: torch.Tensor,
    target: torch.Tensor | None = None,
    epsilon: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Class probabilities [N, C] rebalanced, without labels, so that their mean over the images is `target`.

    Zero-shot CLIP inherits a class prior from its pre-training data that the evaluated set need not share.
    OTTER (Shin et al., NeurIPS 2024, arXiv 2404.08461) corrects it by optimal transport of the images
    (mass 1/N each) onto the classes (mass `target`, uniform by default) under cost -log p(c | x). This
    solves the entropy-regularised version of that problem (Cuturi, NeurIPS 2013) by log-domain Sinkhorn
    iterations, until no image's row mass changes by more than `tol` (relative) or for `max_iter` iterations,
    and returns the transport plan's rows renormalised: p'(c | x) = p(c | x)^(1/epsilon) * v_c / Z(x).
    At epsilon = 1 this is the form of Saerens et al.'s prior-shift correction of posteriors (Neural
    Computation 2002), p(c | x) * q(c) / p(c), with the ratio v = q/p solved for so that the corrected marginal
    is the target instead of estimated by their EM; as epsilon -> 0 the plan tends to OTTER's exact
    (linear-programming) plan. Works on any method's probabilities (softmax of an ensemble's class scores,
    the `prob` mean, ...). Returns the class dual g [C] (float64); `apply_dual` gives the rebalanced rows, one
    image at a time if need be, since each row depends only on itself and g.
    """
    assert probs.ndim == 2 and probs.shape[0] > 0, probs.shape
    if not epsilon > 0:
        raise ClipzsError(f"epsilon must be positive, got {epsilon}")
    n, c = probs.shape
    kernel = probs.double().clamp(min=torch.finfo(torch.float64).tiny).log() / epsilon
    if target is None:
        log_target = kernel.new_full((c,), -math.log(c))
    else:
        if target.shape != (c,) or not bool((target > 0).all()):
            raise ClipzsError(f"target must be {c} positive class frequencies, got {target.tolist()}")
        log_target = (target.double() / target.double().sum()).log().to(kernel.device)
    log_row = -math.log(n)
    f = kernel.new_zeros(n)
    g = kernel.new_zeros(c)
    for _ in range(max_iter):
        g = log_target - torch.logsumexp(kernel + f[:, None], dim=0)
        f_next = log_row - torch.logsumexp(kernel + g, dim=1)
        converged = float((f_next - f).abs().max()) < tol
        f = f_next
        if converged:
            break
    return g


def apply_dual(probs: torch.Tensor, g: torch.Tensor, epsilon: float = 1.0) -> torch.Tensor:
    """Probabilities [..., C] rebalanced under the dual g [C] of `sinkhorn_dual`: p^(1/epsilon) * e^g, renormalised."""
    kernel = probs.double().clamp(min=torch.finfo(torch.float64).tiny).log() / epsilon
    return (kernel + g).softmax(dim=-1).to(probs.dtype)


def balance_classes(probs: torch.Tensor, target: torch.Tensor | None = None, epsilon: float = 1.0) -> torch.Tensor:
    """Class probabilities [N, C] rebalanced, without labels, so that their mean over the images is `target`
    (uniform by default): `apply_dual` of `sinkhorn_dual`."""
    return apply_dual(probs, sinkhorn_dual(probs, target, epsilon), epsilon)


def softmax_multipliers(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """exp((scores - max over templates) / temperature) [T] or [T, C], float32: multipliers whose sum over any
    template subset normalises them into that subset's softmax weights (dim 0 is the template)."""
    _check_temperature(temperature)
    scores = scores.double()
    return ((scores - scores.amax(dim=0)) / temperature).exp().float()
