"""2-D convolution on the CPU, fast: the same maths as reference/conv2d.py (which specifies it and
against which tests/test_cpu_path.py holds this file), arranged for BLAS and the cache.

Every product is one matrix product per chunk of images, on im2col columns laid out as
cols[(c, r, s), (n, i, j)] so that BLAS sees two plain matrices and nothing is transposed on
the way in:

    forward      y[o, (n, i, j)]  = W[o, (c, r, s)] @ cols[(c, r, s), (n, i, j)]
    weight grad  dW[o, (c, r, s)] = dy[o, (n, i, j)] @ cols^T        (the forward's columns)
    input grad   dx[c, (n, u, v)] = W'[c, (o, r', s')] @ dycols[(o, r', s'), (n, u, v)]

The input gradient is itself a convolution: of dy, zero-padded, with the weights flipped and
their two channel axes swapped (stride 1). With stride s it splits into s*s phases, one per
(u mod s, v mod s): each phase of dx is a stride-1 convolution of dy with the taps of the kernel
that land on it (for a 3x3 stride-2 kernel: 1, 2, 2 and 4 taps). A gather (im2col of dy) instead
of the reference's scatter (col2im, kh*kw strided adds over dx).

Chunks of images go to the threads of cupycnn.cpu.parallel; each chunk's columns are gathered
from a zero-bordered copy of the chunk into a buffer the thread keeps between steps. The
training forward keeps its columns for the weight gradient (`cache`), unless they would push
the columns kept at once over COLUMN_CACHE_BYTES: then the backward gathers them again.
`precision` rounds the two operands of each product as the reference does
(reference.rounding.round_operand): x and w forward (the kept columns are of the rounded x), dy
and w for the input gradient, dy and x for the weight gradient.

The weight gradient is cut into tiles of WEIGHT_ROWS output channels by WEIGHT_PIXELS pixels,
fixed by the shapes; the pixel tiles' partial sums are added in order.
"""
import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import parallel
from ..reference.rounding import round_operand

# A chunk's columns are about this size (they stay in the L2/L3 cache while BLAS reads them).
CHUNK_BYTES = 2 * 2**20
# Columns kept from training forwards for their weight gradients, all layers together (in use
# and free for reuse). Past it, a backward gathers its columns again. ResNet-18 at batch 32
# keeps 540 MB.
COLUMN_CACHE_BYTES = 1024 * 2**20

# Weight-gradient tiles: rows of dW (output channels) by pixels of the reduction.
WEIGHT_ROWS, WEIGHT_PIXELS = 64, 4096



def _batch_chunks(n, bytes_per_image):
    """Chunks of images with about CHUNK_BYTES of columns each (from the shapes alone, so that
    every product is the same whatever the thread count)."""
    return parallel.chunks(n, max(1, CHUNK_BYTES // max(1, bytes_per_image)))


def _padded(x, ph, pw, name):
    """x [nb, C, H, W] with a zero border of ph rows and pw columns, in a scratch buffer whose
    border stays zero (only the interior is ever written)."""
    if not ph and not pw:
        return x
    nb, c, h, w = x.shape
    buffer = parallel.scratch(name, (nb, c, h + 2 * ph, w + 2 * pw), x.dtype, zero=True)
    buffer[:, :, ph:ph + h, pw:pw + w] = x
    return buffer


def _gather(xp, kernel, stride, out_size, first, cols):
    """cols[c, r, s, n, i, j] = xp[n, c, first_h + i stride_h + r, first_w + j stride_w + s]
    (cols a [C, kh, kw, nb, Ho, Wo] view)."""
    (kh, kw), (sh, sw), (ho, wo), (fh, fw) = kernel, stride, out_size, first
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))
    windows = windows[:, :, fh:fh + (ho - 1) * sh + 1:sh, fw:fw + (wo - 1) * sw + 1:sw]
    np.copyto(cols, windows.transpose(1, 4, 5, 0, 2, 3))


def _columns_view(cols2d, c, kh, kw, nb, ho, wo):
    return cols2d.reshape(c, kh, kw, nb, ho, wo)


class _ColumnStore:
    """The buffers of kept columns, within COLUMN_CACHE_BYTES for those in use and those free
    together. A backward gives its buffer back for the next step's forward of that shape: at
    these sizes (tens of MB) every new array is fresh pages, which the kernel faults in and
    zeroes at a cost close to that of the gather itself."""

    def __init__(self):
        self.lock = threading.RLock()   # re-entrant: a __del__ may run while it is held
        self.in_use = 0
        self.free = {}                  # (shape, dtype) -> [arrays]

    def free_bytes(self):
        return sum(a.nbytes for arrays in self.free.values() for a in arrays)

    def acquire(self, shape, dtype):
        """A buffer for columns, or None when keeping them would pass the budget."""
        key = (tuple(shape), np.dtype(dtype).str)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with self.lock:
            if self.free.get(key):
                buffer = self.free[key].pop()
            else:
                while self.in_use + self.free_bytes() + nbytes > COLUMN_CACHE_BYTES and \
                        any(self.free.values()):          # room from other shapes' buffers
                    next(arrays for arrays in self.free.values() if arrays).pop()
                if self.in_use + self.free_bytes() + nbytes > COLUMN_CACHE_BYTES:
                    return None
                buffer = np.empty(shape, dtype)
            self.in_use += buffer.nbytes
            return buffer

    def release(self, buffer, reuse=True):
        with self.lock:
            self.in_use -= buffer.nbytes
            if reuse:
                self.free.setdefault((buffer.shape, buffer.dtype.str), []).append(buffer)

    def clear(self):
        """Drop the free buffers (the memory goes back to the system)."""
        with self.lock:
            self.free = {}


_store = _ColumnStore()


class _KeptColumns:
    """Columns a training forward keeps for its weight gradient (counted in the store until the
    backward has used them, or the cache holding them is dropped)."""

    def __init__(self, cols, key):
        self.cols, self.key = cols, key

    def take(self):
        cols, self.cols = self.cols, None
        return cols

    def __del__(self):
        if self.cols is not None:
            _store.release(self.take())


def conv2d_forward(x, weight, bias, stride, padding, cache=None, precision="fp32"):
    """y = conv2d(x, weight) + bias, as reference.conv2d_forward; stride and padding are (h, w)
    pairs. With `cache` (a dict) the columns are kept there for conv2d_backward_weight."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    dtype = np.result_type(x, weight)
    x = round_operand(x.astype(dtype, copy=False), precision)
    weight = round_operand(weight.astype(dtype, copy=False), precision)
    taps, pixels = c * kh * kw, ho * wo
    w2 = weight.reshape(o, taps)
    y = np.empty((n, o, ho, wo), dtype)
    kept = _store.acquire((taps, n * pixels), dtype) if cache is not None and n else None
    if kept is not None:
        cache["columns"] = _KeptColumns(kept, (x.shape, weight.shape, stride, padding,
                                               precision))
    parts = _batch_chunks(n, taps * pixels * dtype.itemsize)
    y3 = y.reshape(n, o, pixels)
    bias_column = None if bias is None else bias.astype(dtype, copy=False).reshape(o, 1)

    def task(k):
        start, stop = parts[k]
        nb = stop - start
        xp = _padded(x[start:stop], ph, pw, "conv.x")
        cols = kept[:, start * pixels:stop * pixels] if kept is not None else \
            parallel.scratch("conv.cols", (taps, nb * pixels), dtype)
        _gather(xp, (kh, kw), (sh, sw), (ho, wo), (0, 0),
                _columns_view(cols, c, kh, kw, nb, ho, wo))
        if nb == 1:                                            # y[n] is [o, pixels] itself
            np.matmul(w2, cols, out=y3[start])
            if bias_column is not None:
                np.add(y3[start], bias_column, out=y3[start])
            return
        out = parallel.scratch("conv.y", (o, nb * pixels), dtype)
        np.matmul(w2, cols, out=out)
        dest = y3[start:stop].transpose(1, 0, 2)               # [o, nb, pixels] view of y
        if bias_column is None:
            np.copyto(dest, out.reshape(o, nb, pixels))
        else:
            np.add(out.reshape(o, nb, pixels), bias_column[:, :, None], out=dest)

    parallel.parallel_for(len(parts), task)
    return y


def _columns(x, weight_shape, stride, padding, out_size):
    """The forward's columns [C kh kw, N Ho Wo] of x, gathered again (the parallel chunks)."""
    n, c, h, w = x.shape
    _, _, kh, kw = weight_shape
    (ph, pw), (ho, wo) = padding, out_size
    pixels = ho * wo
    cols = np.empty((c * kh * kw, n * pixels), x.dtype)
    parts = _batch_chunks(n, c * kh * kw * pixels * x.dtype.itemsize)

    def task(k):
        start, stop = parts[k]
        xp = _padded(x[start:stop], ph, pw, "conv.x")
        _gather(xp, (kh, kw), stride, (ho, wo), (0, 0),
                _columns_view(cols[:, start * pixels:stop * pixels], c, kh, kw, stop - start,
                              ho, wo))

    parallel.parallel_for(len(parts), task)
    return cols


def conv2d_backward_weight(dy, x, weight_shape, stride, padding, cache=None, out=None,
                           precision="fp32"):
    """dw [C_out, C_in, kh, kw], as reference.conv2d_backward_weight, from the columns the
    forward kept in `cache` (or gathered again). Written into `out` when given."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight_shape
    ho, wo = dy.shape[2:]
    pixels = ho * wo
    dtype = np.result_type(dy, x)
    kept = cache.pop("columns", None) if cache is not None else None
    cols = kept.take() if kept is not None else None
    if cols is not None and (kept.key != (x.shape, tuple(weight_shape), stride, padding,
                                          precision) or cols.dtype != dtype):
        _store.release(cols)
        cols = None
    stored = cols is not None
    if not stored:
        cols = _columns(round_operand(x.astype(dtype, copy=False), precision), weight_shape,
                        stride, padding, (ho, wo))
    dy = round_operand(dy.astype(dtype, copy=False), precision)
    # dy as [o, (n, i, j)]: transposed chunk by chunk, in parallel.
    dy2 = np.empty((o, n * pixels), dtype)
    dy3 = dy.reshape(n, o, pixels)
    parts = parallel.split(n, parallel.num_threads())

    def transpose(k):
        start, stop = parts[k]
        np.copyto(dy2[:, start * pixels:stop * pixels].reshape(o, stop - start, pixels),
                  dy3[start:stop].transpose(1, 0, 2))

    parallel.parallel_for(len(parts), transpose)
    taps = c * kh * kw
    into_out = out is not None and out.dtype == dtype and out.flags.c_contiguous
    dw = out.reshape(o, taps) if into_out else np.empty((o, taps), dtype)
    rows = parallel.chunks(o, WEIGHT_ROWS)
    spans = parallel.split(n * pixels, max(1, n * pixels // WEIGHT_PIXELS))
    partial = np.empty((len(spans), o, taps), dtype) if len(spans) > 1 else dw[None]

    def product(k):
        (r0, r1), (p0, p1) = rows[k // len(spans)], spans[k % len(spans)]
        np.matmul(dy2[r0:r1, p0:p1], cols[:, p0:p1].T, out=partial[k % len(spans), r0:r1])

    parallel.parallel_for(len(rows) * len(spans), product)
    if len(spans) > 1:
        np.sum(partial, axis=0, out=dw)           # in pixel order, whatever the threads
    if stored:
        _store.release(cols)
    if into_out:
        return out
    if out is not None:
        out[...] = dw.reshape(weight_shape)
        return out
    return dw.reshape(weight_shape)


def _phases(size, kernel, stride, padding):
    """For one spatial axis: [(phase a, taps r, first shift d, count q)] where input positions
    u = a + stride q (q < count) get sum over the taps of w[r] dy[q + d + t], t = 0 .. taps - 1,
    r = a + padding - stride (d + t)."""
    out = []
    for a in range(stride):
        count = (size - a + stride - 1) // stride
        if count <= 0:
            continue
        taps = [r for r in range(kernel) if (a + padding - r) % stride == 0]
        shifts = [(a + padding - r) // stride for r in taps]
        out.append((a, taps[::-1], min(shifts) if shifts else 0, count))
    return out


def conv2d_backward_input(dy, weight, input_shape, stride, padding, precision="fp32"):
    """dx [N, C_in, H, W], as reference.conv2d_backward_input: for each stride phase, a
    stride-1 convolution of dy with the phase's flipped taps (see the module docstring)."""
    n, c, h, w = input_shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = dy.shape[2:]
    dtype = np.result_type(dy, weight)
    dy = round_operand(dy.astype(dtype, copy=False), precision)
    weight = round_operand(weight.astype(dtype, copy=False), precision)
    dx = np.empty((n, c, h, w), dtype)
    rows, cols_ = _phases(h, kh, sh, ph), _phases(w, kw, sw, pw)
    # One zero border around dy serves every phase: enough for the lowest and highest shift.
    lo_h = max([0] + [-d for _, taps, d, _ in rows if taps])
    hi_h = max([0] + [q - 1 + d + len(taps) - 1 - (ho - 1) for _, taps, d, q in rows if taps])
    lo_w = max([0] + [-d for _, taps, d, _ in cols_ if taps])
    hi_w = max([0] + [q - 1 + d + len(taps) - 1 - (wo - 1) for _, taps, d, q in cols_ if taps])
    phases = []
    for a, taps_h, dh, qh in rows:
        for b, taps_w, dw_, qw in cols_:
            if not taps_h or not taps_w:
                phases.append((a, b, None, None, None, qh, qw))
                continue
            # W'[c, (o, t, t')] = w[o, c, r(t), s(t')]: the phase's taps, flipped, channels swapped
            sub = weight[:, :, taps_h][:, :, :, taps_w]
            wt = np.ascontiguousarray(sub.transpose(1, 0, 2, 3)).reshape(c, -1)
            phases.append((a, b, wt, (len(taps_h), len(taps_w)), (dh + lo_h, dw_ + lo_w), qh, qw))
    per_image = max(o * len(t1) * len(t2) * q1 * q2 for _, t1, _, q1 in rows
                    for _, t2, _, q2 in cols_) * dtype.itemsize
    parts = _batch_chunks(n, max(1, per_image))

    def task(k):
        start, stop = parts[k]
        nb = stop - start
        chunk = dy[start:stop]
        if lo_h or hi_h or lo_w or hi_w:
            dyp = parallel.scratch("conv.dy", (nb, o, lo_h + ho + hi_h, lo_w + wo + hi_w), dtype,
                                   zero=True)
            dyp[:, :, lo_h:lo_h + ho, lo_w:lo_w + wo] = chunk
        else:
            dyp = chunk
        for a, b, wt, taps, first, qh, qw in phases:
            dest = dx[start:stop, :, a::sh, b::sw].transpose(1, 0, 2, 3)     # [c, nb, qh, qw]
            if wt is None:                        # no tap of the kernel lands on this phase
                dest[...] = 0
                continue
            pixels = nb * qh * qw
            cols = parallel.scratch("conv.dycols", (o * taps[0] * taps[1], pixels), dtype)
            _gather(dyp, taps, (1, 1), (qh, qw), first,
                    _columns_view(cols, o, taps[0], taps[1], nb, qh, qw))
            if nb == 1 and sh == sw == 1:                      # dx[n] is [c, pixels] itself
                np.matmul(wt, cols, out=dx[start].reshape(c, pixels))
                continue
            result = parallel.scratch("conv.dx", (c, pixels), dtype)
            np.matmul(wt, cols, out=result)
            np.copyto(dest, result.reshape(c, nb, qh, qw))

    parallel.parallel_for(len(parts), task)
    return dx
