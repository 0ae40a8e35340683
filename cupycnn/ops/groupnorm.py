"""Group normalisation: launches kernels/groupnorm.cu (and, for the forward statistics,
batchnorm_stats of kernels/batchnorm.cu); specified by reference/groupnorm.py.

x is [N, C, *] (float32 on the kernel devices); C / num_groups consecutive channels form a group,
and each (sample, group) is normalised with its own statistics. A group's elements are
contiguous, so its sums (sum x, sum x^2) are the per-"channel" sums of x viewed as
[1, N * G, C / G * prod(*)]: exactly what batchnorm_stats computes, double accumulation and GPU
filling split included.
"""
import math

import numpy as np

from .. import devices as _device
from ..limits import GRID_YZ_MAX
from ..reference import groupnorm as reference
from ..runtime import ceil_div, get_kernel
from . import batchnorm as batchnorm_ops
from ._check import check_arrays, into
from ._launch import kernel_constants

_K = kernel_constants("groupnorm")
GN_THREADS, GN_ROWS_PER_BLOCK = _K["GN_THREADS"], _K["GN_ROWS_PER_BLOCK"]
GN_ELEMENTS_PER_BLOCK = _K["GN_ELEMENTS_PER_BLOCK"]
MAX_GROUP_ELEMENTS = GRID_YZ_MAX * GN_ELEMENTS_PER_BLOCK   # chunks of a group on the grid's y axis


def _layout(op, x, num_groups):
    """(N, C, inner) after checking x [N, C, *] and that num_groups divides C."""
    check_arrays(op, x=(x, None))
    if x.ndim < 2:
        raise ValueError(f"{op}: x must have shape (N, C, ...), got {tuple(x.shape)}")
    batch, channels, inner = int(x.shape[0]), int(x.shape[1]), math.prod(x.shape[2:])
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"{op}: num_groups={num_groups} must divide the {channels} channels of "
                         f"x {tuple(x.shape)}")
    if batch * channels * inner == 0:
        raise ValueError(f"{op}: x must not be empty, got shape {tuple(x.shape)}")
    if channels // num_groups * inner > MAX_GROUP_ELEMENTS:
        raise ValueError(f"{op}: at most {MAX_GROUP_ELEMENTS} elements per group, got "
                         f"{channels // num_groups * inner}")
    return batch, channels, inner


def _x_pattern(x):
    return ("N", "C") + (None,) * (x.ndim - 2)


def groupnorm_forward(x, weight, bias, num_groups, eps):
    """y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c], mean and biased var per (sample,
    group). Returns (y, mean, invstd), mean and invstd [N, num_groups] for the backward."""
    op = "groupnorm_forward"
    batch, channels, inner = _layout(op, x, num_groups)
    check_arrays(op, x=(x, _x_pattern(x)), weight=(weight, ("C",)), bias=(bias, ("C",)))
    if not _device.runs_kernels():
        return reference.groupnorm_forward(x, weight, bias, num_groups, eps)
    groups_total, count = batch * num_groups, channels // num_groups * inner
    sums = batchnorm_ops.batchnorm_stats(x.reshape(1, groups_total, count))
    y = _device.empty(x.shape, x.dtype)
    mean = _device.empty((batch, num_groups), x.dtype)
    invstd = _device.empty((batch, num_groups), x.dtype)
    get_kernel("groupnorm", "groupnorm_forward")(
        (groups_total, ceil_div(count, GN_ELEMENTS_PER_BLOCK)), (GN_THREADS,),
        (x, sums, weight, bias, y, mean, invstd, np.int32(channels), np.int32(inner),
         np.int32(num_groups), np.float32(eps)))
    return y, mean, invstd


def groupnorm_backward(x, dy, weight, mean, invstd, num_groups, dweight=None, dbias=None):
    """Returns (dx, dweight, dbias): the full gradient through each group's mean and variance;
    dweight and dbias are written into the given arrays (a layer's gradient buffers) if any."""
    op = "groupnorm_backward"
    batch, channels, inner = _layout(op, x, num_groups)
    grads = {} if dweight is None else {"dweight": (dweight, ("C",))}
    if dbias is not None:
        grads["dbias"] = (dbias, ("C",))
    check_arrays(op, x=(x, _x_pattern(x)), dy=(dy, tuple(x.shape)), weight=(weight, ("C",)),
                 mean=(mean, (batch, num_groups)), invstd=(invstd, (batch, num_groups)), **grads)
    if not _device.runs_kernels():
        dx, dw, db = reference.groupnorm_backward(x, dy, weight, mean, invstd, num_groups)
        return dx, into(dweight, dw), into(dbias, db)
    rows, count = batch * channels, channels // num_groups * inner
    ints = (np.int32(channels), np.int32(inner), np.int32(num_groups))
    partial = _device.empty((batch, channels, 2), np.float64)
    get_kernel("groupnorm", "groupnorm_backward_reduce")(
        (ceil_div(rows, GN_ROWS_PER_BLOCK),), (GN_THREADS,),
        (x, dy, mean, invstd, partial, np.int32(rows)) + ints)
    dweight = _device.empty((channels,), x.dtype) if dweight is None else dweight
    dbias = _device.empty((channels,), x.dtype) if dbias is None else dbias
    get_kernel("groupnorm", "groupnorm_backward_params")(
        (ceil_div(channels, GN_THREADS),), (GN_THREADS,),
        (partial, dweight, dbias, np.int32(batch), np.int32(channels)))
    dx = _device.empty(x.shape, x.dtype)
    get_kernel("groupnorm", "groupnorm_backward_input")(
        (batch * num_groups, ceil_div(count, GN_ELEMENTS_PER_BLOCK)), (GN_THREADS,),
        (x, dy, weight, mean, invstd, partial, dx) + ints)
    return dx, dweight, dbias
