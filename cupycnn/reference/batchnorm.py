"""Batch normalisation: the specification of kernels/batchnorm.cu (PyTorch's BatchNorm1d and
BatchNorm2d), stage by stage, function for function with ops/batchnorm.py.

x is [N, C, *]; per channel c the statistics run over its n = N * prod(*) elements (n counts
every rank's elements when the sums were all-reduced). The per-channel sums are float64 [C, 2]
whatever the input's dtype, as the kernels produce them.

    forward, training:  sums = batchnorm_stats(x)                          (sum x, sum x^2)
                        y, mean, invstd = batchnorm_normalize(x, sums, n, weight, bias, eps)
                        batchnorm_update_running_stats(sums, n, running_mean, running_var,
                                                       num_batches_tracked, momentum)
    forward, eval:      y, mean, invstd = batchnorm_normalize_running(x, running_mean,
                                                                      running_var, ...)
    backward:           sums = batchnorm_backward_reduce(x, dy, mean, invstd)  (sum dy, sum dy xhat)
                        dx, dweight, dbias = batchnorm_backward_apply(x, dy, weight, mean,
                                                                      invstd, sums, n, ...)

Fused epilogue: the normalize functions take `residual` (added) and `relu` (applied after),
y = relu(batchnorm(x) + residual), exactly the composition of the three ops in x's dtype. The
backward takes that y: g = dy where y > 0 (else 0) replaces dy, and `dresidual = g`.
"""
import numpy as np


def _channel_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, ndim):
    """A [C] vector shaped to broadcast against [N, C, *]."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batchnorm_stats(x):
    """[C, 2] float64: (sum of x, sum of x^2) over every axis but the channel axis."""
    x64 = x.astype(np.float64)
    axes = _channel_axes(x)
    return np.stack([x64.sum(axis=axes), (x64 * x64).sum(axis=axes)], axis=1)


def _mean_var(sums, count):
    """Mean and biased variance from the sums over `count` elements (float64)."""
    mean = sums[:, 0] / count
    return mean, np.maximum(sums[:, 1] / count - mean * mean, 0.0)


def _normalize(x, mean, invstd, weight, bias, residual=None, relu=False):
    d = x.ndim
    y = (x - _per_channel(mean, d)) * _per_channel(invstd * weight, d) + _per_channel(bias, d)
    if residual is not None:
        y = y + residual
    return np.maximum(y, 0) if relu else y


def batchnorm_normalize(x, sums, count, weight, bias, eps, residual=None, relu=False):
    """Training forward from the batch statistics: y = (x - mean) / sqrt(var + eps) * weight +
    bias with mean = sum x / count and the biased var = sum x^2 / count - mean^2 (then
    + residual, then max(y, 0), when asked). Returns y and the per-channel mean and invstd =
    1 / sqrt(var + eps) (in x's dtype) for the backward."""
    mean, var = _mean_var(sums, count)
    mean, invstd = mean.astype(x.dtype), (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    return _normalize(x, mean, invstd, weight, bias, residual, relu), mean, invstd


def batchnorm_normalize_running(x, running_mean, running_var, weight, bias, eps, residual=None,
                                relu=False):
    """Evaluation forward: the same map with the running statistics. Returns y, mean, invstd."""
    mean = running_mean.astype(x.dtype)
    invstd = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(x.dtype)
    return _normalize(x, mean, invstd, weight, bias, residual, relu), mean, invstd


def masked_grad(dy, y):
    """The gradient at the normalised value: dy, or where a fused ReLU's output y > 0."""
    return dy if y is None else np.where(y > 0, dy, dy.dtype.type(0))


def batchnorm_update_running_stats(sums, count, running_mean, running_var, num_batches_tracked,
                                   momentum):
    """PyTorch's update, in place: num_batches_tracked += 1, then with f = momentum (or
    1 / num_batches_tracked when momentum is None, a cumulative average)
        running_mean = (1 - f) running_mean + f mean
        running_var  = (1 - f) running_var  + f var * count / (count - 1)    (unbiased)."""
    num_batches_tracked[...] = num_batches_tracked + 1
    factor = 1.0 / float(num_batches_tracked) if momentum is None else float(momentum)
    mean, var = _mean_var(sums, count)
    unbiased = var * count / (count - 1)
    running_mean[...] = ((1 - factor) * running_mean + factor * mean).astype(running_mean.dtype)
    running_var[...] = ((1 - factor) * running_var + factor * unbiased).astype(running_var.dtype)


def batchnorm_backward_reduce(x, dy, mean, invstd, y=None):
    """[C, 2] float64: (sum g, sum g * xhat) per channel, xhat = (x - mean) * invstd, g = dy
    (or masked by a fused ReLU's output y)."""
    dy = masked_grad(dy, y)
    d = x.ndim
    axes = _channel_axes(x)
    dy64 = dy.astype(np.float64)
    xmu = x.astype(np.float64) - _per_channel(mean.astype(np.float64), d)
    return np.stack([dy64.sum(axis=axes),
                     (dy64 * xmu).sum(axis=axes) * invstd.astype(np.float64)], axis=1)


def batchnorm_backward_apply(x, dy, weight, mean, invstd, sums, count, batch_statistics=True,
                             param_sums=None, y=None):
    """dx, dweight, dbias. After a fused forward, dy is first masked by its output y (and the
    gradient of its residual is masked_grad(dy, y)).

    batch_statistics (after a training forward; mean and var depend on every x of the channel):
        dx = weight * invstd * (dy - sum dy / count - xhat * sum(dy xhat) / count)
    frozen statistics (after an evaluation forward: constants, as when fine-tuning):
        dx = weight * invstd * dy
    dweight = sum dy * xhat and dbias = sum dy, taken from param_sums (default: sums), which a
    synchronised batchnorm keeps local while `sums` are all ranks'."""
    dy = masked_grad(dy, y)
    d = x.ndim
    param_sums = sums if param_sums is None else param_sums
    scale = _per_channel(weight * invstd, d)
    if batch_statistics:
        mean_dy = _per_channel((sums[:, 0] / count).astype(x.dtype), d)
        mean_dy_xhat = _per_channel((sums[:, 1] / count).astype(x.dtype), d)
        xhat = (x - _per_channel(mean, d)) * _per_channel(invstd, d)
        dx = scale * (dy - mean_dy - xhat * mean_dy_xhat)
    else:
        dx = scale * dy
    return dx, param_sums[:, 1].astype(x.dtype), param_sums[:, 0].astype(x.dtype)
