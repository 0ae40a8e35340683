"""Max pooling on the CPU, fast, for windows that tile the input (kernel == stride, no padding:
the MaxPool2d(2) of most CNNs): reference/pool.py's results, bit for bit, from kh*kw strided
views of x instead of a gathered [..., kh*kw] copy of every window. Other geometries, and
average and global pooling (already one pass each), run the reference.

Forward: y is the running maximum over the window's taps in window order (NaN wins, as in
the reference); the argmax is then the first tap equal to y (or NaN where y is NaN), found by
walking the taps backwards. Backward: each window's dy goes to the tap its argmax names; an
argmax outside its own window (not from this forward) takes the reference's general scatter.
"""
import numpy as np

from . import parallel
from ..reference import pool as reference


def tiles(kernel, stride, padding):
    """True when the windows tile the input: this file's fast case."""
    return tuple(kernel) == tuple(stride) and tuple(padding) == (0, 0)


def _taps(a, kernel, out):
    """a [N, C, H, W] -> the kh*kw views a[:, :, oh kh + r, ow kw + s], each [N, C, OH, OW],
    in window order."""
    (kh, kw), (oh, ow) = kernel, out
    n, c = a.shape[:2]
    tiled = a[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)
    return [tiled[:, :, :, r, :, s] for r in range(kh) for s in range(kw)]


def max_pool2d_forward(x, kernel, stride, padding):
    """(y, argmax int32), as reference.max_pool2d_forward."""
    if not tiles(kernel, stride, padding):
        return reference.max_pool2d_forward(x, kernel, stride, padding)
    (kh, kw), (h, w) = kernel, x.shape[2:]
    n, c = x.shape[:2]
    out = (h // kh, w // kw)
    y = np.empty((n, c) + out, x.dtype)
    argmax = np.empty((n, c) + out, np.int32)
    parts = parallel.chunks(n, max(1, -(-n // parallel.num_threads())))
    # The flat index in the plane of tap 0 of each window, and each tap's offset from it.
    corner = ((np.arange(out[0]) * kh * w)[:, None] + np.arange(out[1]) * kw).astype(np.int32)
    offsets = [r * w + s for r in range(kh) for s in range(kw)]

    def task(k):
        start, stop = parts[k]
        taps = _taps(x[start:stop], kernel, out)
        ys, tap = y[start:stop], argmax[start:stop]
        np.copyto(ys, taps[0])
        for t in taps[1:]:
            np.maximum(ys, t, out=ys)                       # NaN propagates
        equal = parallel.scratch("pool.equal", ys.shape, np.bool_)
        step = parallel.scratch("pool.step", ys.shape, np.int32)
        nan = ys != ys
        any_nan = bool(nan.any())
        tap.fill(offsets[-1])
        for offset, t in zip(offsets[-2::-1], taps[-2::-1]):   # backwards: the first match wins
            np.equal(t, ys, out=equal)
            if any_nan:
                equal |= (t != t) & nan
            np.multiply(equal, offset - tap, out=step, casting="unsafe")   # where(equal, offset, tap)
            tap += step
        tap += corner

    parallel.parallel_for(len(parts), task, nbytes=2 * x.nbytes)
    return y, argmax


def max_pool2d_backward(dy, argmax, input_size, kernel, stride, padding):
    """dx, as reference.max_pool2d_backward."""
    if not tiles(kernel, stride, padding):
        return reference.max_pool2d_backward(dy, argmax, input_size)
    (kh, kw), (h, w) = kernel, input_size
    n, c, oh, ow = dy.shape
    corner = ((np.arange(oh) * kh * w)[:, None] + np.arange(ow) * kw).astype(np.int32)
    local = argmax - corner                                   # r w + s inside the window
    row, col = np.divmod(local, w)
    if local.size and not ((row >= 0) & (row < kh) & (col >= 0) & (col < kw)).all():
        return reference.max_pool2d_backward(dy, argmax, input_size)
    tap = (row * kw + col).astype(np.int32)
    dx = np.zeros((n, c, h, w), dy.dtype)
    bits = {4: np.int32, 8: np.int64}[dy.itemsize]
    dy_bits = dy.view(bits)
    for t, view in enumerate(_taps(dx, kernel, (oh, ow))):
        mask = (tap == t).astype(bits)
        np.negative(mask, out=mask)                           # all ones where this tap won
        np.bitwise_and(dy_bits, mask, out=view.view(bits))
    return dx
