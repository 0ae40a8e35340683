"""Max pooling on the CPU, fast, for windows that tile the input (kernel == stride, no padding:
the MaxPool2d(2) of most CNNs): reference/pool.py's results, bit for bit. Other geometries, and
average and global pooling (already one pass each), run the reference.

Forward, when the windows cover the input exactly and no NaN is in it: two reductions, each
over long runs (NumPy's cost is per run): first along every row, pairs of neighbours
(x.reshape(-1, kw)[:, s], one strided run over the whole tensor) give each row's maximum in
its window and the first s reaching it; then over the window's kh rows (runs of OW). A
strictly greater later value is what moves the choice, so the argmax is the first maximum in
window order (row by row), the reference's np.argmax. Otherwise (a NaN, which wins in the
reference, or cut edges) the kh*kw strided tap views: y the running maximum, the argmax the
first tap equal to y, found by walking the taps backwards.
Backward: each window's dy goes to the element its argmax names, by one scatter into a zeroed
dx (windows do not overlap: no sums), after checking that every argmax lies in its own window
(one not from this forward takes the reference's general scatter). dy + 0 is what lands, as
in the reference's np.add.at into zeros (a -0 becomes +0).
"""
import numpy as np

from . import parallel
from ..reference import pool as reference


def tiles(kernel, stride, padding):
    """True when the windows tile the input: this file's fast case."""
    return tuple(kernel) == tuple(stride) and tuple(padding) == (0, 0)


def _corners(out, kernel, w):
    """[OH, OW] int32: each window's first element, as a flat index into its W-wide plane."""
    (oh, ow), (kh, kw) = out, kernel
    return ((np.arange(oh) * kh * w)[:, None] + np.arange(ow) * kw).astype(np.int32)


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
    out = (h // kh, w // kw)
    if out[0] * kh == h and out[1] * kw == w and x.size:
        y, argmax = _forward_rows(x, kernel, out)
        if not np.isnan(y).any():
            return y, argmax
    return _forward_taps(x, kernel, out)


def _first_max(values):
    """(best, index): the maximum of the equal-shaped values and the first k reaching it (a
    later value moves the choice only when strictly greater). For two values, index is the
    bool values[1] > values[0]."""
    if len(values) == 2:
        return np.maximum(values[0], values[1]), values[1] > values[0]
    best, index = np.array(values[0]), np.zeros(values[0].shape, np.int32)
    for k, v in enumerate(values[1:], start=1):
        np.copyto(index, k, where=v > best)
        np.maximum(best, v, out=best)
    return best, index


def _forward_rows(x, kernel, out):
    """The exact-cover, NaN-free forward: row maxima over s, then over the window's rows (see
    the module docstring)."""
    (kh, kw), (oh, ow) = kernel, out
    n, c, h, w = x.shape
    runs = x.reshape(-1, kw)                                     # [(n, c, h, j), s]
    row_max, row_s = _first_max([runs[:, s] for s in range(kw)])
    rows = row_max.reshape(n * c * oh, kh, ow)
    y, best_r = _first_max([rows[:, r] for r in range(kh)])
    row_s = row_s.reshape(n * c * oh, kh, ow)
    if kh == 2 and kw == 2:                  # where(best_r, s of row 1, s of row 0), in bits
        best_s = row_s[:, 0] ^ row_s[:, 1]
        best_s &= best_r
        best_s ^= row_s[:, 0]
    elif kh == 2:
        best_s = np.where(best_r, row_s[:, 1], row_s[:, 0])
    else:
        best_s = np.take_along_axis(row_s, best_r[:, None, :].astype(np.intp), axis=1)[:, 0]
    corner = _corners((oh, ow), kernel, w)
    argmax = best_r.astype(np.int32).reshape(n, c, oh, ow)
    np.multiply(argmax, w, out=argmax)
    argmax += best_s.reshape(n, c, oh, ow)
    argmax += corner
    return y.reshape(n, c, oh, ow), argmax


def _forward_taps(x, kernel, out):
    """The general tiling forward (NaN, cut edges): over the kh*kw strided tap views."""
    (kh, kw), (h, w) = kernel, x.shape[2:]
    n, c = x.shape[:2]
    y = np.empty((n, c) + out, x.dtype)
    argmax = np.empty((n, c) + out, np.int32)
    parts = parallel.chunks(n, max(1, -(-n // parallel.num_threads())))
    # The flat index in the plane of tap 0 of each window, and each tap's offset from it.
    corner = _corners(out, kernel, w)
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
    dx = np.zeros((n * c, h * w), dy.dtype)
    if not dy.size:
        return dx.reshape(n, c, h, w)
    corner = _corners((oh, ow), kernel, w)
    local = argmax - corner                                   # r w + s inside the window
    inside = np.zeros(kh * w, np.bool_)                       # the window's r w + s
    inside[(np.arange(kh)[:, None] * w + np.arange(kw)).ravel()] = True
    if local.min() < 0 or local.max() >= kh * w or not inside[local].all():
        return reference.max_pool2d_backward(dy, argmax, input_size)
    planes = (np.arange(n * c, dtype=np.intp) * (h * w))[:, None]
    flat = argmax.reshape(n * c, -1) + planes                 # every window's own element
    dx.reshape(-1)[flat.reshape(-1)] = np.add(dy, 0).reshape(-1)
    return dx.reshape(n, c, h, w)
