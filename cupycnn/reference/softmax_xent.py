"""Softmax cross-entropy: the specification of kernels/softmax_xent.cu.

PyTorch's `F.cross_entropy(logits, labels, label_smoothing=e)` (reduction "mean"): for logits
z [N, C] and labels y [N], row i's target is t_ic = (1 - e)[c == y_i] + e / C and

    loss = (1/N) sum_i  -sum_c t_ic log softmax(z_i)_c
    dloss/dz_ic = (softmax(z_i)_c - t_ic) / N

Written with m_i = max_c z_ic and s_i = sum_c exp(z_ic - m_i), as the kernels compute it:

    loss_i = log s_i + (1 - e)(m_i - z_iy) + (e / C) sum_c (m_i - z_ic)
    softmax(z_i)_c = exp(z_ic - m_i) / s_i

Every exponent is <= 0 and every other term a sum of non-negative gaps, so nothing overflows and
nothing cancels. A label outside [0, C) gives its row a NaN loss and gradient (the kernels' way
of reporting it without a device-to-host copy; the host wrappers raise a ValueError first
wherever the labels are on the host). Computes in the logits' dtype, float32 or float64.
"""
import numpy as np


def softmax(logits):
    """softmax(z_i)_c = exp(z_ic - m_i) / s_i for logits [N, C], in the logits' dtype: the
    class probabilities (what Trainer.predict and cupycnn.predict return, on the host)."""
    gaps = np.exp(logits - logits.max(axis=1, keepdims=True))
    return gaps / gaps.sum(axis=1, keepdims=True)


def _as_int64(labels):
    # Every label that is a class index survives (a uint64 above 2^63 wraps negative: still not
    # a class index), and -1 and 0 below mean the same in every dtype.
    return np.asarray(labels).astype(np.int64, copy=False)


def _valid(labels, classes):
    return (labels >= 0) & (labels < classes)


def softmax_xent_forward(logits, labels, label_smoothing=0.0):
    """(loss, row_max, row_sum): the mean loss as a 0-d array, and per row the maximum logit m_i
    and the sum s_i of exp(z - m_i), which the backward needs."""
    rows, classes = logits.shape
    labels = _as_int64(labels)
    e = label_smoothing
    row_max = logits.max(axis=1)
    gaps = row_max[:, None] - logits                          # m - z >= 0
    row_sum = np.exp(-gaps).sum(axis=1)
    valid = _valid(labels, classes)
    label_gap = gaps[np.arange(rows), np.where(valid, labels, 0)]
    row_loss = np.log(row_sum) + (1 - e) * label_gap
    if e != 0:                       # skipped at e = 0: a logit of -inf must not give 0 * inf
        row_loss = row_loss + e / classes * gaps.sum(axis=1)
    row_loss = np.where(valid, row_loss, np.nan).astype(logits.dtype, copy=False)
    return batch_mean(row_loss), row_max, row_sum.astype(logits.dtype, copy=False)


def batch_mean(values):
    """The mean of a vector, as a 0-d array of its dtype."""
    return np.asarray(np.mean(values, dtype=values.dtype), dtype=values.dtype)


def softmax_xent_backward(logits, labels, row_max, row_sum, label_smoothing=0.0):
    """dloss/dlogits = (softmax - target) / N, from the forward's row_max and row_sum."""
    rows, classes = logits.shape
    labels = _as_int64(labels)
    e = label_smoothing
    softmax = np.exp(logits - row_max[:, None]) / row_sum[:, None]
    valid = _valid(labels, classes)
    target = np.full(logits.shape, e / classes, dtype=logits.dtype)
    target[np.arange(rows)[valid], labels[valid]] += 1 - e
    grad = (softmax - target) / rows
    grad[~valid] = np.nan
    return grad.astype(logits.dtype, copy=False)


def narrow_labels(labels, classes):
    """Labels of any integer dtype as int32, with -1 for every value outside [0, classes)."""
    labels = _as_int64(labels)
    return np.where(_valid(labels, classes), labels, -1).astype(np.int32)
