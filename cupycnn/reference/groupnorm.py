"""Group normalisation: the specification of kernels/groupnorm.cu (PyTorch's GroupNorm),
function for function with ops/groupnorm.py.

x is [N, C, *]; the C channels form G groups of C / G consecutive channels, and each (sample,
group) is normalised over its count = C / G * prod(*) elements with its own mean and biased
variance, then scaled and shifted per channel:

    y = (x - mean[n, g]) * invstd[n, g] * weight[c] + bias[c],   invstd = 1 / sqrt(var + eps)

Backward, with xhat = (x - mean) * invstd and dxhat = dy * weight[c], sums over the group:
    dx      = invstd * (dxhat - sum dxhat / count - xhat * sum(dxhat * xhat) / count)
    dweight = sum over n and * of dy * xhat,    dbias = sum over n and * of dy
"""
import numpy as np


def _grouped(x, num_groups):
    """x as [N, G, C / G * prod(*)]: each group's elements are contiguous."""
    return x.reshape(x.shape[0], num_groups, -1)


def _per_channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def groupnorm_forward(x, weight, bias, num_groups, eps):
    """y, and mean and invstd as [N, G] (x's dtype) for the backward. Statistics are computed in
    float64, as the kernels do."""
    g = _grouped(x.astype(np.float64), num_groups)
    mean = g.mean(axis=2)
    var = np.maximum((g * g).mean(axis=2) - mean * mean, 0.0)
    mean, invstd = mean.astype(x.dtype), (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = ((_grouped(x, num_groups) - mean[:, :, None]) * invstd[:, :, None]).reshape(x.shape)
    return xhat * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim), mean, invstd


def groupnorm_backward(x, dy, weight, mean, invstd, num_groups):
    """dx, dweight, dbias (see the module docstring)."""
    count = x[0].size // num_groups
    xhat = ((_grouped(x, num_groups) - mean[:, :, None]) * invstd[:, :, None]).reshape(x.shape)
    axes = (0,) + tuple(range(2, x.ndim))
    dweight = (dy * xhat).sum(axis=axes, dtype=np.float64).astype(x.dtype)
    dbias = dy.sum(axis=axes, dtype=np.float64).astype(x.dtype)
    dxhat = _grouped(dy * _per_channel(weight, x.ndim), num_groups)
    xhat_g = _grouped(xhat, num_groups)
    mean_dxhat = dxhat.sum(axis=2, dtype=np.float64) / count
    mean_dxhat_xhat = (dxhat * xhat_g).sum(axis=2, dtype=np.float64) / count
    dx = invstd[:, :, None] * (dxhat - mean_dxhat[:, :, None].astype(x.dtype)
                             - xhat_g * mean_dxhat_xhat[:, :, None].astype(x.dtype))
    return dx.reshape(x.shape), dweight, dbias
