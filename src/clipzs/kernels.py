"""Compiled kernels (numba) behind `fused`: sums, quotients and label ranks of class scores, one image at a time.

Imported only when `fused` runs a kernel, so that smaller jobs never pay numba's import. Every function does the
float32 arithmetic of the torch code it replaces, operation for operation (no fast-math, so no reassociation and
no fused multiply-adds); the tests check the results bit for bit against torch.

Arguments shared by the kernels: the addends of the four accumulators (`fused.SLOTS`) come as the scores
logit [B, T, C], their softmax prob [B, T, C], and the template weights zpe [T] and carprt [T, C] that multiply
the scores; `lo:hi` is the range of images a call works on (the callers split a block between threads).
"""

from __future__ import annotations

import numba
import numpy as np


def _compile(function):
    """`function` compiled without the GIL, cached on disk where numba finds a writable folder (else compiled once
    per process: numba raises RuntimeError when it has nowhere to cache)."""
    options = {"nogil": True, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:
        return numba.njit(**options)(function)


@_compile
def addend(logit, prob, zpe, carprt, accumulator, b, t, base, out):
    """Write template t's addend of `accumulator` (an index into fused.SLOTS) for image b into out [C], added to
    base [C] (the running sum it extends; `addend + base`, as torch adds them) unless base is empty. One loop per
    case: a test inside the loop would keep it from being vectorised."""
    n = out.shape[0]
    if base.shape[0] == 0:
        if accumulator == 0:
            for c in range(n):
                out[c] = logit[b, t, c]
        elif accumulator == 1:
            for c in range(n):
                out[c] = prob[b, t, c]
        elif accumulator == 2:
            for c in range(n):
                out[c] = logit[b, t, c] * zpe[t]
        else:
            for c in range(n):
                out[c] = logit[b, t, c] * carprt[t, c]
    elif accumulator == 0:
        for c in range(n):
            out[c] = logit[b, t, c] + base[c]
    elif accumulator == 1:
        for c in range(n):
            out[c] = prob[b, t, c] + base[c]
    elif accumulator == 2:
        for c in range(n):
            out[c] = logit[b, t, c] * zpe[t] + base[c]
    else:
        for c in range(n):
            out[c] = logit[b, t, c] * carprt[t, c] + base[c]


@_compile
def rank(sums, divisors, label):
    """(classes whose quotient sums / divisors is strictly above the label's, classes before the label whose
    quotient equals it): the label is the first maximum exactly when both are 0."""
    at_label = sums[label] / divisors[label]
    above = 0
    ties = 0
    for c in range(sums.shape[0]):
        v = sums[c] / divisors[c]
        above += v > at_label
        ties += (v == at_label) & (c < label)
    return above, ties


@_compile
def first_max(sums, divisors):
    """The first class of largest quotient sums / divisors, as `torch.argmax` picks."""
    best = sums[0] / divisors[0]
    first = 0
    for c in range(1, sums.shape[0]):
        v = sums[c] / divisors[c]
        if v > best:
            best = v
            first = c
    return first


@_compile
def rank_level(
    logit, prob, zpe, carprt, used, members, labels, acc_of, divisors, rows_of, lo, hi, hit1, above, pred, want
):
    """Subsets members [M, K], each summed in the order of its members: for each method j and subset m with a row
    (rows_of[j, m] >= 0), the class scores sums of accumulator acc_of[j] / divisors[j, m], ranked against labels [B].
    Writes hit1 (the first maximum is the label), above (classes strictly above it) and, with `want`, pred (the
    first maximum) at [row, image]. A subset reuses the partial sums of the members it shares, in front, with the
    previous one; accumulators not in `used` are not summed."""
    size = members.shape[1]
    partial = np.empty((4, size, logit.shape[2]), np.float32)  # partial[a, k]: the first k + 1 members' sum
    nothing = np.empty(0, np.float32)
    for b in range(lo, hi):
        for m in range(members.shape[0]):
            shared = 0
            if m > 0:
                while shared < size and members[m, shared] == members[m - 1, shared]:
                    shared += 1
            for a in used:
                for k in range(shared, size):
                    base = partial[a, k - 1] if k > 0 else nothing
                    addend(logit, prob, zpe, carprt, a, b, members[m, k], base, partial[a, k])
            for j in range(acc_of.shape[0]):
                r = rows_of[j, m]
                if r >= 0:
                    count, ties = rank(partial[acc_of[j], size - 1], divisors[j, m], labels[b])
                    hit1[r, b] = count == 0 and ties == 0
                    above[r, b] = count
                    if want:
                        pred[r, b] = first_max(partial[acc_of[j], size - 1], divisors[j, m])


@_compile
def candidate_hits(logit, prob, zpe, carprt, accumulator, state, candidates, labels, divisors, lo, hi, hit1):
    """Greedy selection's step: hit1[m, b] whether the label is the first maximum of the class scores
    (addend of template candidates[m] + state [B, C], the running sum of the templates chosen so far; the addend
    alone when state is empty) / divisors [M, C]."""
    out = np.empty(logit.shape[2], np.float32)
    nothing = np.empty(0, np.float32)
    for b in range(lo, hi):
        base = state[b] if state.shape[0] else nothing
        for m in range(candidates.shape[0]):
            addend(logit, prob, zpe, carprt, accumulator, b, candidates[m], base, out)
            count, ties = rank(out, divisors[m], labels[b])
            hit1[m, b] = count == 0 and ties == 0


@_compile
def weight_statistics(logit, mu, lo, hi, corrected, top, pred):
    """What ZPE's and CARPRT's weights are fitted from, for each image and template of finite scores logit
    [B, T, C]: corrected [B, T] the top of the scores minus the template's mean scores mu [T, C] (skipped when mu
    is empty), top [B, T] the top score and pred [B, T] its class (the first, as `torch.max` picks)."""
    for b in range(lo, hi):
        for t in range(logit.shape[1]):
            if mu.shape[0]:
                best = logit[b, t, 0] - mu[t, 0]
                for c in range(1, logit.shape[2]):
                    best = max(best, logit[b, t, c] - mu[t, c])
                corrected[b, t] = best
            first = 0
            for c in range(1, logit.shape[2]):
                if logit[b, t, c] > logit[b, t, first]:
                    first = c
            top[b, t] = logit[b, t, first]
            pred[b, t] = first


@_compile
def subset_sums_at(x, members, rows, images, classes, lo, hi, out):
    """out[p, j] = the sum of x[images[p], t, classes[p, j]] (x [B, T, C]) over the templates t of subset
    members[rows[p]], added in order, for p in lo:hi: a few of `ensemble.subset_sums`' sums."""
    for p in range(lo, hi):
        subset, b = members[rows[p]], images[p]
        for j in range(classes.shape[1]):
            c = classes[p, j]
            total = x[b, subset[0], c]
            for k in range(1, subset.shape[0]):
                total = total + x[b, subset[k], c]
            out[p, j] = total
