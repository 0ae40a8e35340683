"""Batch normalisation in four stages: launches kernels/batchnorm.cu; specified by
reference/batchnorm.py (same function names).

    sums = batchnorm_stats(x)                                 (1) [C, 2] float64: sum x, sum x^2
    #   <- a synchronised batchnorm all-reduces `sums` (and the count) here
    y, mean, invstd = batchnorm_normalize(x, sums, count, weight, bias, eps)             (2)
    batchnorm_update_running_stats(sums, count, running_mean, running_var,
                                   num_batches_tracked, momentum)
    ...
    sums = batchnorm_backward_reduce(x, dy, mean, invstd)     (3) [C, 2]: sum dy, sum dy xhat
    #   <- and here
    dx, dweight, dbias = batchnorm_backward_apply(x, dy, weight, mean, invstd, sums, count,
                                                  param_sums=local_sums)                 (4)

Fused epilogue: (2) takes `residual` and `relu`, y = relu(bn(x) + residual) in one pass; (3)
and (4) then take that `y` (the ReLU's mask) and (4) writes the residual's gradient into
`dresidual`.

x is [N, C, *] (BatchNorm1D: [N, C] or [N, C, L]; BatchNorm2D: [N, C, H, W]), float32 on the
kernel devices. The per-channel sums are float64 [C, 2] on every device: the kernels accumulate
in double, so that var = E[x^2] - E[x]^2 does not cancel away when |mean| >> std.
On the numpy device float32 runs go to cupycnn/cpu/batchnorm.py (the same stages, faster).
"""
import math

import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import batchnorm as cpu_bn
from ..cpu import elementwise as cpu_elementwise
from ..limits import GRID_YZ_MAX
from ..reference import batchnorm as reference
from ..runtime import ceil_div, get_kernel
from ._check import check_arrays, check_int32, check_positive, into
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix
from ._launch import TARGET_BLOCKS, kernel_constants

_BN = kernel_constants("batchnorm")
BN_THREADS, BN_RUNNING_THREADS = _BN["BN_THREADS"], _BN["BN_RUNNING_THREADS"]
BN_ELEMENTS_PER_BLOCK = _BN["BN_ELEMENTS_PER_BLOCK"]
# The reductions split a channel over several blocks until the grid has about TARGET_BLOCKS
# blocks (a layer with 64 channels would otherwise run on 64 SMs), but each block keeps at least
# this many elements (32 per thread), so that the partial sums and their combination stay a
# negligible part of the work.
REDUCE_MIN_ELEMENTS_PER_SPLIT = 8192
# Elementwise stages put the chunks of a channel on the grid's y axis.
MAX_CHANNEL_ELEMENTS = GRID_YZ_MAX * BN_ELEMENTS_PER_BLOCK


def _layout(op, x, name="x"):
    """(outer, channels, inner) of x viewed as [N, C, prod(*)], after checking it."""
    check_arrays(op, dtypes=activation_dtypes(), **{name: (x, None)})
    if x.ndim < 2:
        raise ValueError(f"{op}: {name} must have shape (N, C, ...), got {tuple(x.shape)}")
    outer, channels, inner = int(x.shape[0]), int(x.shape[1]), math.prod(x.shape[2:])
    if outer * inner * channels == 0:
        raise ValueError(f"{op}: {name} must not be empty, got shape {tuple(x.shape)}")
    if outer * inner > MAX_CHANNEL_ELEMENTS:
        raise ValueError(f"{op}: at most {MAX_CHANNEL_ELEMENTS} elements per channel (the grid's "
                         f"y axis), got {outer * inner} for shape {tuple(x.shape)}")
    check_int32(op, elements=outer * channels * inner)
    return outer, channels, inner


def _vector_dtype(x):
    """The dtype of per-channel vectors (mean, invstd, parameter gradients) for activations x:
    float32 for BF16 storage, else x's."""
    return np.dtype(np.float32) if is_bf16(x) else x.dtype


def _check(op, x, activations=(), vectors=()):
    """x and the other activations (name -> (array, pattern)) share one storage; the
    per-channel vectors (name -> array, [C]) are float, of one dtype. Returns the bound sizes."""
    bound = check_arrays(op, dtypes=activation_dtypes(), x=(x, _x_pattern(x)),
                         **{k: v for k, v in activations if v[0] is not None})
    if vectors:
        check_arrays(op, bound=bound, **{k: (v, ("C",)) for k, v in vectors})
    return bound


def _x_pattern(x):
    return ("N", "C") + (None,) * (x.ndim - 2)


def _check_sums(op, sums, bound, name="sums"):
    check_arrays(op, bound=bound, dtypes=(np.float64,), **{name: (sums, ("C", 2))})


def _check_count(op, count, minimum=1):
    if not isinstance(count, (int, np.integer)) or int(count) < minimum:
        raise ValueError(f"{op}: count (elements per channel) must be an integer of at least "
                         f"{minimum}, got {count!r}")


def choose_splits(channels, count):
    """How many blocks reduce one channel: 1 when the channels alone fill the GPU, else enough
    to reach about TARGET_BLOCKS blocks, each with REDUCE_MIN_ELEMENTS_PER_SPLIT or more."""
    wanted = ceil_div(TARGET_BLOCKS, channels)
    return max(1, min(wanted, count // REDUCE_MIN_ELEMENTS_PER_SPLIT))


def _reduce(op, kernel, inputs, outer, channels, inner, splits):
    """Launch a reduction kernel over (channels, splits) blocks; combine splits if more than one."""
    count = outer * inner
    splits = choose_splits(channels, count) if splits is None else int(splits)
    check_positive(op, splits=splits)
    sums = _device.empty((channels, 2), np.float64)
    partial = sums if splits == 1 else _device.empty((channels, splits, 2), np.float64)
    get_kernel("batchnorm", kernel)((channels, splits), (BN_THREADS,),
                                    inputs + (partial, np.int32(outer), np.int32(channels),
                                              np.int32(inner)))
    if splits > 1:
        combine_partials(partial, out=sums)
    return sums


def combine_partials(partial, out=None):
    """[C, 2] float64: the [C, splits, 2] partial sums of a split reduction added per channel in
    split order (a fixed order: the same bits on every run). Kernel devices only."""
    channels, splits = int(partial.shape[0]), int(partial.shape[1])
    sums = _device.empty((channels, 2), np.float64) if out is None else out
    get_kernel("batchnorm", "batchnorm_combine_partials")(
        (channels,), (BN_THREADS,), (partial, sums, np.int32(channels), np.int32(splits)))
    return sums


def _elementwise_grid(channels, outer, inner):
    return (channels, ceil_div(outer * inner, BN_ELEMENTS_PER_BLOCK)), (BN_THREADS,)


def batchnorm_stats(x, splits=None):
    """(1) [C, 2] float64: (sum x, sum x^2) per channel of x [N, C, *]. `splits`: blocks per
    channel (default: chosen to fill the GPU; more than one adds a combining pass)."""
    op = "batchnorm_stats"
    outer, channels, inner = _layout(op, x)
    if not _device.runs_kernels():
        path = cpu_bn if cpu.fast(x) else reference
        return reference_bf16(path.batchnorm_stats, x, outputs=0) if is_bf16(x) else \
            path.batchnorm_stats(x)
    return _reduce(op, "batchnorm_stats" + suffix(x), (x,), outer, channels, inner, splits)


def batchnorm_normalize(x, sums, count, weight, bias, eps, residual=None, relu=False):
    """(2) y = (x - mean) / sqrt(var + eps) * weight + bias with the batch statistics from
    `sums` over `count` elements per channel (biased variance); then + residual (same shape as
    x) and max(y, 0), when asked, in the same pass. Returns (y, mean, invstd); mean and invstd
    [C] are what the backward needs."""
    op = "batchnorm_normalize"
    outer, channels, inner = _layout(op, x)
    bound = _check(op, x, [("residual", (residual, tuple(x.shape)))],
                   [("weight", weight), ("bias", bias)])
    _check_sums(op, sums, bound)
    _check_count(op, count)
    if not _device.runs_kernels():
        path = cpu_bn if cpu.fast(x, weight, bias, residual) else reference
        return reference_bf16(path.batchnorm_normalize, x, sums, count, weight, bias, eps,
                              residual, relu) if is_bf16(x) else \
            path.batchnorm_normalize(x, sums, count, weight, bias, eps, residual, relu)
    y = _device.empty(x.shape, x.dtype)
    mean = _device.empty((channels,), _vector_dtype(x))
    invstd = _device.empty((channels,), _vector_dtype(x))
    grid, block = _elementwise_grid(channels, outer, inner)
    get_kernel("batchnorm", "batchnorm_normalize" + suffix(x))(
        grid, block, (x, sums, np.int64(count), weight, bias, residual, np.int32(bool(relu)), y,
                      mean, invstd, np.int32(outer), np.int32(channels), np.int32(inner),
                      np.float32(eps)))
    return y, mean, invstd


def batchnorm_normalize_running(x, running_mean, running_var, weight, bias, eps, residual=None,
                                relu=False):
    """(2, evaluation) The same map with the running statistics. Returns (y, mean, invstd)."""
    op = "batchnorm_normalize_running"
    outer, channels, inner = _layout(op, x)
    _check(op, x, [("residual", (residual, tuple(x.shape)))],
           [("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
            ("bias", bias)])
    if not _device.runs_kernels():
        path = cpu_bn if cpu.fast(x, weight, bias, residual) else reference
        return reference_bf16(path.batchnorm_normalize_running, x, running_mean, running_var,
                              weight, bias, eps, residual, relu) if is_bf16(x) else \
            path.batchnorm_normalize_running(x, running_mean, running_var, weight, bias, eps,
                                             residual, relu)
    y = _device.empty(x.shape, x.dtype)
    mean = _device.empty((channels,), _vector_dtype(x))
    invstd = _device.empty((channels,), _vector_dtype(x))
    grid, block = _elementwise_grid(channels, outer, inner)
    get_kernel("batchnorm", "batchnorm_normalize_running" + suffix(x))(
        grid, block, (x, running_mean, running_var, weight, bias, residual,
                      np.int32(bool(relu)), y, mean, invstd, np.int32(outer), np.int32(channels),
                      np.int32(inner), np.float32(eps)))
    return y, mean, invstd


def batchnorm_update_running_stats(sums, count, running_mean, running_var, num_batches_tracked,
                                   momentum):
    """In place, PyTorch's rule: num_batches_tracked += 1; with f = momentum, or
    1 / num_batches_tracked when momentum is None, running_mean = (1 - f) running_mean + f mean
    and running_var = (1 - f) running_var + f var * count / (count - 1) (unbiased)."""
    op = "batchnorm_update_running_stats"
    bound = check_arrays(op, running_mean=(running_mean, ("C",)),
                         running_var=(running_var, ("C",)))
    _check_sums(op, sums, bound)
    _check_count(op, count, minimum=2)
    check_arrays(op, dtypes=(np.int64,), num_batches_tracked=(num_batches_tracked, ()))
    if momentum is not None and not isinstance(momentum, (float, int, np.floating)):
        raise ValueError(f"{op}: momentum must be a number or None, got {momentum!r}")
    if not _device.runs_kernels():
        reference.batchnorm_update_running_stats(sums, count, running_mean, running_var,
                                                 num_batches_tracked, momentum)
        return
    get_kernel("batchnorm", "batchnorm_update_running_stats")(
        (1,), (BN_RUNNING_THREADS,),
        (sums, np.int64(count), np.float32(0.0 if momentum is None else momentum),
         np.int32(momentum is None), running_mean, running_var, num_batches_tracked,
         np.int32(bound["C"])))


def batchnorm_backward_reduce(x, dy, mean, invstd, splits=None, y=None):
    """(3) [C, 2] float64: (sum dy, sum dy * xhat) per channel, xhat = (x - mean) * invstd with
    the mean and invstd the forward returned. y: a fused forward's output (its ReLU masks dy)."""
    op = "batchnorm_backward_reduce"
    outer, channels, inner = _layout(op, x)
    _check(op, x, [("dy", (dy, tuple(x.shape))), ("y", (y, tuple(x.shape)))],
           [("mean", mean), ("invstd", invstd)])
    if not _device.runs_kernels():
        path = cpu_bn if cpu.fast(x, dy, y) else reference
        return reference_bf16(path.batchnorm_backward_reduce, x, dy, mean, invstd, y,
                              outputs=0) if is_bf16(x) else \
            path.batchnorm_backward_reduce(x, dy, mean, invstd, y)
    return _reduce(op, "batchnorm_backward_reduce" + suffix(x), (x, dy, y, mean, invstd), outer,
                   channels, inner, splits)


def batchnorm_backward_apply(x, dy, weight, mean, invstd, sums, count, batch_statistics=True,
                             param_sums=None, dweight=None, dbias=None, y=None, dresidual=None):
    """(4) Returns (dx, dweight, dbias).

    batch_statistics=True (after a training forward): the full gradient through the mean and
    variance, dx = weight * invstd * (dy - sum dy / count - xhat * sum(dy xhat) / count), with
    `sums` over `count` elements (all ranks'). False (after an evaluation forward): frozen
    statistics, dx = weight * invstd * dy. dweight = sum dy xhat, dbias = sum dy from
    `param_sums` (this rank's sums; default `sums`), written into `dweight` / `dbias` when given.
    After a fused forward: y, its output, masks dy first (the ReLU), and `dresidual`, when
    given, receives the residual's gradient (the masked dy).
    """
    op = "batchnorm_backward_apply"
    outer, channels, inner = _layout(op, x)
    vectors = [("weight", weight), ("mean", mean), ("invstd", invstd)]
    vectors += [(name, a) for name, a in (("dweight", dweight), ("dbias", dbias)) if a is not None]
    bound = _check(op, x, [("dy", (dy, tuple(x.shape))), ("y", (y, tuple(x.shape))),
                           ("dresidual", (dresidual, tuple(x.shape)))], vectors)
    param_sums = sums if param_sums is None else param_sums
    _check_sums(op, sums, bound)
    _check_sums(op, param_sums, bound, "param_sums")
    _check_count(op, count)
    if not _device.runs_kernels():
        fast = cpu.fast(x, dy, weight, y)
        path = cpu_bn if fast else reference
        store = reference_bf16 if is_bf16(x) else (lambda fn, *args: fn(*args))
        dx, dw, db = store(path.batchnorm_backward_apply, x, dy, weight, mean, invstd, sums,
                           count, batch_statistics, param_sums, y)
        if dresidual is not None:
            dresidual[...] = store(cpu_elementwise.relu_backward, y, dy) if fast and \
                y is not None else store(reference.masked_grad, dy, y)
        return dx, into(dweight, dw), into(dbias, db)
    dx = _device.empty(x.shape, x.dtype)
    dweight = _device.empty((channels,), _vector_dtype(x)) if dweight is None else dweight
    dbias = _device.empty((channels,), _vector_dtype(x)) if dbias is None else dbias
    grid, block = _elementwise_grid(channels, outer, inner)
    get_kernel("batchnorm", "batchnorm_backward_apply" + suffix(x))(
        grid, block, (x, dy, y, weight, mean, invstd, sums, np.int64(count), param_sums, dx,
                      dresidual, dweight, dbias, np.int32(outer), np.int32(channels),
                      np.int32(inner), np.int32(bool(batch_statistics))))
    return dx, dweight, dbias
