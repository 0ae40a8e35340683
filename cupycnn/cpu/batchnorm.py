"""Batch normalisation on the CPU, fast: reference/batchnorm.py's stages (same names, same
results to float32 rounding), computed in the input's dtype with out= into reused buffers,
chunk by chunk of the batch on the threads of cupycnn.cpu.parallel.

What changes from the reference, and why it stays accurate:
- Sums. The reference converts x to float64 and sums. Here each image's plane of a channel is
  summed in float32 as a product with a vector of ones (one BLAS sgemv for a chunk's planes,
  its accumulators several lanes wide: an error of a few ulp for these plane sizes, like
  NumPy's pairwise sum, at a quarter of its time on digits' 64-element planes), and the planes
  are added up in float64. The sum of squares is taken about the batch mean (a second pass over
  x - mean, as a two-pass variance), then shifted back: sum x^2 = sum (x - m)^2 + 2 m sum x -
  n m^2, in float64. So the [C, 2] sums are what the reference returns, and a channel whose mean
  is large against its spread loses nothing to E[x^2] - E[x]^2 (the kernels sum in double for
  the same reason).
- No temporaries of the whole tensor: each chunk's intermediate (x - mean, its products) lives
  in a buffer of this thread that fits in the L2 cache.
Results do not depend on the thread count: per-plane sums, added over the batch in order.

The fused epilogue of the reference (y = relu(bn(x) + residual); its backward masks dy by y > 0)
is the same steps, in the same chunk pass.
"""
import math

import numpy as np

from . import parallel

CHUNK_BYTES = 256 * 2**10       # one chunk's intermediate fits in L2
# Per-channel constants are spread over their planes when a plane is shorter than this: NumPy
# then sees [nb, C inner] against [1, C inner], one long loop, instead of a loop per plane.
SPREAD_INNER = 256


def _channel(v, c, inner, dtype):
    """The per-channel values v [C] as an array that broadcasts against [nb, C, inner]."""
    v = np.asarray(v, dtype).reshape(1, c, 1)
    return np.repeat(v, inner, axis=2) if inner < SPREAD_INNER else v


def _layout(x):
    n, c = x.shape[:2]
    inner = math.prod(x.shape[2:])
    return n, c, inner


def _parts(n, c, inner, itemsize):
    return parallel.chunks(n, max(1, CHUNK_BYTES // max(1, c * inner * itemsize)))


_ones = {}


def _sum_planes(chunk, out):
    """out[n, c] = sum of the contiguous chunk[n, c, :], in chunk's dtype."""
    inner = chunk.shape[2]
    if inner == 1:
        np.copyto(out, chunk[:, :, 0])
        return
    ones = _ones.get((inner, chunk.dtype.str))
    if ones is None:
        ones = _ones[(inner, chunk.dtype.str)] = np.ones(inner, chunk.dtype)
    np.matmul(chunk.reshape(-1, inner), ones, out=out.reshape(-1))


def _plane_sums(x3, parts, fn=None):
    """[N, C] float32: sum over each plane x3[n, c, :] (of fn(chunk) when given)."""
    n, c, inner = x3.shape
    out = np.empty((n, c), x3.dtype)

    def task(k):
        start, stop = parts[k]
        chunk = x3[start:stop] if fn is None else fn(start, stop)
        _sum_planes(chunk, out[start:stop])

    parallel.parallel_for(len(parts), task, nbytes=x3.nbytes * (1 if fn is None else 3))
    return out


def plane_sums(x):
    """[N, C] in x's dtype: the sum of each plane x[n, c, ...] (also channel_sum's first stage,
    cupycnn/cpu/reduce.py)."""
    n, c, inner = _layout(x)
    return _plane_sums(x.reshape(n, c, inner), _parts(n, c, inner, x.itemsize))


def _mean_var(sums, count):
    mean = sums[:, 0] / count
    return mean, np.maximum(sums[:, 1] / count - mean * mean, 0.0)


def batchnorm_stats(x):
    """[C, 2] float64: (sum of x, sum of x^2) per channel, as reference.batchnorm_stats."""
    n, c, inner = _layout(x)
    x3 = x.reshape(n, c, inner)
    parts = _parts(n, c, inner, x.itemsize)
    sum_x = _plane_sums(x3, parts).sum(axis=0, dtype=np.float64)
    shift = (sum_x / (n * inner)).astype(x.dtype)          # the batch mean, rounded
    shift3 = _channel(shift, c, inner, x.dtype)

    def centred_squares(start, stop):
        d = parallel.scratch("bn.d", (stop - start, c, inner), x.dtype)
        np.subtract(x3[start:stop], shift3, out=d)
        return np.square(d, out=d)

    squares = _plane_sums(x3, parts, centred_squares).sum(axis=0, dtype=np.float64)
    m = shift.astype(np.float64)
    return np.stack([sum_x, squares + 2.0 * m * sum_x - (n * inner) * m * m], axis=1)


def _normalize(x, mean, invstd, weight, bias, residual=None, relu=False):
    """(x - mean) * (invstd * weight) + bias [+ residual] [then max(., 0)], as the reference's
    _normalize (x - mean first, so that it is exact-ish however large the mean), chunk by chunk
    (in L2) on the threads."""
    n, c, inner = _layout(x)
    y = np.empty(x.shape, x.dtype)
    x3, y3 = x.reshape(n, c, inner), y.reshape(n, c, inner)
    r3 = None if residual is None else residual.reshape(n, c, inner)
    mean3, scale3, bias3 = (_channel(v, c, inner, x.dtype) for v in (mean, invstd * weight, bias))
    parts = _parts(n, c, inner, x.itemsize)

    def task(k):
        start, stop = parts[k]
        out = y3[start:stop]
        np.subtract(x3[start:stop], mean3, out=out)
        np.multiply(out, scale3, out=out)
        np.add(out, bias3, out=out)
        if r3 is not None:
            np.add(out, r3[start:stop], out=out)
        if relu:
            np.maximum(out, 0, out=out)

    parallel.parallel_for(len(parts), task, nbytes=x.nbytes * (2 if r3 is None else 3))
    return y


def batchnorm_normalize(x, sums, count, weight, bias, eps, residual=None, relu=False):
    """y, mean, invstd from the batch statistics, as reference.batchnorm_normalize."""
    mean, var = _mean_var(sums, count)
    mean, invstd = mean.astype(x.dtype), (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    return _normalize(x, mean, invstd, weight.astype(x.dtype, copy=False),
                      bias.astype(x.dtype, copy=False), residual, relu), mean, invstd


def batchnorm_normalize_running(x, running_mean, running_var, weight, bias, eps, residual=None,
                                relu=False):
    """The evaluation map with the running statistics, as the reference."""
    mean = running_mean.astype(x.dtype)
    invstd = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(x.dtype)
    return _normalize(x, mean, invstd, weight.astype(x.dtype, copy=False),
                      bias.astype(x.dtype, copy=False), residual, relu), mean, invstd


_BITS = {4: np.int32, 8: np.int64}


def _masked(dy, y, start, stop, name):
    """dy[start:stop], or where a fused ReLU's output y > 0 (+0 elsewhere, exactly the
    reference's masked_grad), in this thread's buffer `name`."""
    if y is None:
        return dy[start:stop]
    g = parallel.scratch(name, dy[start:stop].shape, dy.dtype)
    bits = parallel.scratch(name + ".bits", g.shape, _BITS[dy.itemsize])
    positive = parallel.scratch(name + ".mask", g.shape, np.bool_)
    np.greater(y[start:stop], 0, out=positive)
    np.subtract(0, positive, out=bits, dtype=bits.dtype)  # all ones or all zeros
    np.bitwise_and(dy[start:stop].view(bits.dtype), bits, out=g.view(bits.dtype))
    return g


def batchnorm_backward_reduce(x, dy, mean, invstd, y=None):
    """[C, 2] float64: (sum g, sum g * xhat), g = dy (masked by y), as
    reference.batchnorm_backward_reduce."""
    n, c, inner = _layout(x)
    x3, dy3 = x.reshape(n, c, inner), dy.reshape(n, c, inner)
    y3 = None if y is None else y.reshape(n, c, inner)
    parts = _parts(n, c, inner, x.itemsize)
    mean3 = _channel(mean, c, inner, x.dtype)
    planes = np.empty((2, n, c), x.dtype)           # per plane: sum g, sum g (x - mean)

    def task(k):
        start, stop = parts[k]
        g = _masked(dy3, y3, start, stop, "bn.g")
        _sum_planes(g, planes[0, start:stop])
        d = parallel.scratch("bn.d", (stop - start, c, inner), x.dtype)
        np.subtract(x3[start:stop], mean3, out=d)
        np.multiply(d, g, out=d)
        _sum_planes(d, planes[1, start:stop])

    parallel.parallel_for(len(parts), task, nbytes=x.nbytes * (3 if y3 is None else 5))
    sum_dy, sum_dy_xmu = planes.sum(axis=1, dtype=np.float64)
    return np.stack([sum_dy, sum_dy_xmu * invstd.astype(np.float64)], axis=1)


def batchnorm_backward_apply(x, dy, weight, mean, invstd, sums, count, batch_statistics=True,
                             param_sums=None, y=None):
    """dx, dweight, dbias, as reference.batchnorm_backward_apply:
    dx = weight invstd (g - mean(g) - xhat mean(g xhat)), or weight invstd g (frozen), with
    g = dy masked by a fused ReLU's output y."""
    dtype = x.dtype
    param_sums = sums if param_sums is None else param_sums
    scale = (weight * invstd).astype(dtype)
    dx = np.empty(x.shape, dtype)
    n, c, inner = _layout(x)
    x3, dy3, dx3 = x.reshape(n, c, inner), dy.reshape(n, c, inner), dx.reshape(n, c, inner)
    y3 = None if y is None else y.reshape(n, c, inner)
    scale3 = _channel(scale, c, inner, dtype)
    parts = _parts(n, c, inner, x.itemsize)
    if batch_statistics:
        mean_dy = _channel((sums[:, 0] / count).astype(dtype), c, inner, dtype)
        # xhat * mean(g xhat) = (x - mean) * (invstd * mean(g xhat))
        k = _channel((invstd * (sums[:, 1] / count).astype(dtype)).astype(dtype), c, inner,
                     dtype)
        mean3 = _channel(mean, c, inner, dtype)

    def task(j):
        start, stop = parts[j]
        out = dx3[start:stop]
        g = _masked(dy3, y3, start, stop, "bn.g")
        if not batch_statistics:
            np.multiply(g, scale3, out=out)
            return
        d = parallel.scratch("bn.d", (stop - start, c, inner), dtype)
        np.subtract(x3[start:stop], mean3, out=d)
        np.multiply(d, k, out=d)
        np.subtract(g, mean_dy, out=out)
        np.subtract(out, d, out=out)
        np.multiply(out, scale3, out=out)

    parallel.parallel_for(len(parts), task, nbytes=x.nbytes * (4 if y3 is None else 6))
    return dx, param_sums[:, 1].astype(dtype), param_sums[:, 0].astype(dtype)
