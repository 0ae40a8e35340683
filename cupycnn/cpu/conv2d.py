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

Wide columns (stride 1, small images). A gather copies runs as long as an output row (8 floats
on an 8x8 image), and a run costs about as much as its copy. With stride 1 a tap's values for
all the output pixels lie at one offset of the zero-bordered plane, so if the output rows are
taken as wide as the bordered rows (Wp = W + 2 pw, the last kw - 1 columns of each row junk),
a tap's columns are one contiguous run of Ho Wp floats. The product then does Wp / Wo times
the work, the junk columns are dropped when y is written, and the weight gradient multiplies
them by zeros in dy's wide copy. Chosen where the gather's saving outweighs the product's
extra columns: (Wp - Wo) M <= WIDE_LIMIT Wo, M the product's rows, among the layers that do
not take channels-last columns (below): digits' first layer and ResNet-18's stride-1 32x32 ones
(measured per layer before channels-last columns existed, forward and both gradients at one
thread: 1.44x on digits' first layer, 1.08x on ResNet's 64-channel 32x32). The sums are the
same products in the same order, and a
non-finite x in a junk column's reach is multiplied by a zero: NaN in dW where the reference
has inf (or NaN) already.

Channels-last columns (many channels, small images). On a 4x4 image every gathered run above
is 4 floats long (with 64 channels, 73,728 runs per 32 images), and NumPy's cost per run is
what a gather costs. Copied channels-last first ([nb, H, W, C], one pass), the chunk's
columns become rows: cols[(n, i, j), (r, s, c)] = xc[n, i sh + r, j sw + s, c], runs of C
floats. The products turn over: y^T [(n, i, j), o] = cols @ W[o, (r, s, c)]^T (then
transposed into y), dW[o, (r, s, c)] = dy[o, (n, i, j)] @ cols, and each input-gradient phase
gathers dy channels-last the same way. Chosen where C >= 16 and either Wo <= 8 or C >= 8 Wo
(`python benchmarks/cpu_choices.py layouts [--resnet]`, forward and both gradients per layer
at one thread: 1.17x on digits' 32-channel 8x8 layer, 1.39x and 1.43x on its 4x4 ones,
1.07-1.12x on ResNet-18's from 16x16 and 128 channels down; 0.88-0.95x on its 64-channel 32x32
layers, 0.64x on its 1x1 shortcut and 0.74x on the stem, which keep the planes). The sums are
the same products in another order of the taps.
"""
import math
import threading

import numpy as np

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
# Wide columns where (Wp - Wo) * rows <= WIDE_LIMIT * Wo (see the module docstring).
WIDE_LIMIT = 8
# Channels-last columns where C >= LAST_MIN_CHANNELS and either Wo <= LAST_SHORT_ROW or
# C >= LAST_RUN_RATIO * Wo (see the module docstring). LAYOUT: None (chosen by that rule), or
# "last" / "planes" to force one (tests).
LAST_MIN_CHANNELS, LAST_SHORT_ROW, LAST_RUN_RATIO = 16, 8, 8
LAYOUT = None


def _wide(stride, out_w, row_w, rows):
    """Gather wide columns (rows of row_w) for a product with `rows` output rows?"""
    return tuple(stride) == (1, 1) and (row_w - out_w) * rows <= WIDE_LIMIT * out_w


def _last(channels, out_w):
    """Gather channels-last columns (runs of `channels` floats) rather than runs of `out_w`?"""
    if LAYOUT is not None:
        return LAYOUT == "last"
    return channels >= LAST_MIN_CHANNELS and (out_w <= LAST_SHORT_ROW or
                                              channels >= LAST_RUN_RATIO * out_w)


def _view(a, offset, shape, strides):
    """The elements a.flat[offset + sum(index * strides)] as an array of `shape` (offset and
    strides in elements), a read-only view of a's memory. NumPy checks that it stays inside a.
    (What sliding_window_view and as_strided build, at a tenth of their cost per call.)"""
    a = np.ascontiguousarray(a)
    size = a.itemsize
    view = np.ndarray(shape, a.dtype, buffer=a, offset=offset * size,
                      strides=tuple(size * t for t in strides))
    view.flags.writeable = False
    return view


def _gather_last(xc, kernel, stride, out_size, first, cols):
    """cols[n, i, j, r, s, c] = xc[n, first_h + i stride_h + r, first_w + j stride_w + s, c]
    (cols a [nb, Ho, Wo, kh, kw, C] view; xc channels-last [nb, H, W, C])."""
    (kh, kw), (sh, sw), (ho, wo), (fh, fw) = kernel, stride, out_size, first
    nb, h, w, c = xc.shape
    np.copyto(cols, _view(xc, (fh * w + fw) * c, (nb, ho, wo, kh, kw, c),
                          (h * w * c, sh * w * c, sw * c, w * c, c, 1)))


def _padded_last(x, border, name):
    """x [nb, C, H, W] as channels-last [nb, H + top + bottom, W + left + right, C] with a zero
    border (top, bottom, left, right), in a scratch buffer whose border stays zero."""
    top, bottom, left, right = border
    nb, c, h, w = x.shape
    buffer = parallel.scratch(name, (nb, top + h + bottom, left + w + right, c), x.dtype,
                              zero=True)
    np.copyto(buffer[:, top:top + h, left:left + w], x.transpose(0, 2, 3, 1))
    return buffer


def _gather_wide(xp, kernel, out_rows, first, cols):
    """cols[c, r, s, n, q] = xp[n, c].flat[(first_h + r) Wd + first_w + s + q], q < out_rows Wd
    (cols a [C, kh, kw, nb, out_rows Wd] view; xp [nb, C, R, Wd] has a spare zero row below
    the last one read, so every run stays inside its plane)."""
    (kh, kw), (fh, fw) = kernel, first
    nb, c, rows, wd = xp.shape
    assert fh + kh - 1 + out_rows < rows and fw + kw - 1 <= wd
    np.copyto(cols, _view(xp, fh * wd + fw, (c, kh, kw, nb, out_rows * wd),
                          (rows * wd, wd, 1, c * rows * wd, 1)))


def _batch_chunks(n, bytes_per_image):
    """Chunks of images of equal size with at most about CHUNK_BYTES of columns each (from the
    shapes alone, so that every product is the same whatever the thread count)."""
    return parallel.split(n, -(-n * max(1, bytes_per_image) // CHUNK_BYTES))


def _padded(x, ph, pw, name, spare_row=False):
    """x [nb, C, H, W] with a zero border of ph rows and pw columns (and one more zero row
    below, for wide columns), in a scratch buffer whose border stays zero (only the interior
    is ever written)."""
    if not ph and not pw and not spare_row:
        return x
    nb, c, h, w = x.shape
    buffer = parallel.scratch(name, (nb, c, h + 2 * ph + spare_row, w + 2 * pw), x.dtype,
                              zero=True)
    buffer[:, :, ph:ph + h, pw:pw + w] = x
    return buffer


def _gather(xp, kernel, stride, out_size, first, cols):
    """cols[c, r, s, n, i, j] = xp[n, c, first_h + i stride_h + r, first_w + j stride_w + s]
    (cols a [C, kh, kw, nb, Ho, Wo] view)."""
    (kh, kw), (sh, sw), (ho, wo), (fh, fw) = kernel, stride, out_size, first
    nb, c, h, w = xp.shape
    np.copyto(cols, _view(xp, fh * w + fw, (c, kh, kw, nb, ho, wo),
                          (h * w, w, 1, c * h * w, sh * w, sw)))


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
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
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
    taps = c * kh * kw
    last = _last(c, wo)
    wide = not last and _wide(stride, wo, w + 2 * pw, o)
    row = w + 2 * pw if wide else wo           # the columns' row length
    pixels = ho * row
    # The taps' order in a column: (c, r, s), or (r, s, c) channels-last.
    w2 = np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(o, taps) if last else \
        weight.reshape(o, taps)
    y = np.empty((n, o, ho, wo), dtype)
    shape = (n * pixels, taps) if last else (taps, n * pixels)
    kept = _store.acquire(shape, dtype) if cache is not None and n else None
    if kept is not None:
        layout = "last" if last else "wide" if wide else "narrow"
        cache["columns"] = _KeptColumns(kept, (x.shape, weight.shape, stride, padding,
                                               precision, layout))
    parts = _batch_chunks(n, taps * pixels * dtype.itemsize)
    y3 = y.reshape(n, o, ho * wo)
    bias_column = None if bias is None else bias.astype(dtype, copy=False).reshape(o, 1)

    def task(k):
        start, stop = parts[k]
        nb = stop - start
        if last:      # y^T [(n, i, j), o] = cols [(n, i, j), (r, s, c)] @ w2^T
            xc = _padded_last(x[start:stop], (ph, ph, pw, pw), "conv.x.last")
            cols = kept[start * pixels:stop * pixels] if kept is not None else \
                parallel.scratch("conv.cols.last", (nb * pixels, taps), dtype)
            _gather_last(xc, (kh, kw), (sh, sw), (ho, wo), (0, 0),
                         cols.reshape(nb, ho, wo, kh, kw, c))
            out = parallel.scratch("conv.y.last", (nb * pixels, o), dtype)
            np.matmul(cols, w2.T, out=out)
            if bias_column is not None:
                np.add(out, bias_column[:, 0], out=out)
            np.copyto(y3[start:stop], out.reshape(nb, pixels, o).transpose(0, 2, 1))
            return
        xp = _padded(x[start:stop], ph, pw, "conv.x", spare_row=wide)
        cols = kept[:, start * pixels:stop * pixels] if kept is not None else \
            parallel.scratch("conv.cols", (taps, nb * pixels), dtype)
        if wide:
            _gather_wide(xp, (kh, kw), ho, (0, 0), cols.reshape(c, kh, kw, nb, pixels))
            out = parallel.scratch("conv.y", (o, nb * pixels), dtype)
            np.matmul(w2, cols, out=out)
            dest = y[start:stop].transpose(1, 0, 2, 3)          # [o, nb, ho, wo] view of y
            source = out.reshape(o, nb, ho, row)[:, :, :, :wo]
            if bias_column is None:
                np.copyto(dest, source)
            else:
                np.add(source, bias_column[:, :, None, None], out=dest)
            return
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

    parallel.parallel_for(len(parts), task, nbytes=parallel.product_bytes(o, taps, n * pixels) +
                          2 * taps * n * pixels * dtype.itemsize)
    return y


def _columns(x, weight_shape, stride, padding, out_size, last):
    """The forward's columns [C kh kw, N Ho Wo] of x (channels-last: [N Ho Wo, kh kw C]),
    gathered again (the parallel chunks)."""
    n, c, h, w = x.shape
    _, _, kh, kw = weight_shape
    (ph, pw), (ho, wo) = padding, out_size
    pixels = ho * wo
    cols = np.empty((n * pixels, c * kh * kw) if last else (c * kh * kw, n * pixels), x.dtype)
    parts = _batch_chunks(n, c * kh * kw * pixels * x.dtype.itemsize)

    def task(k):
        start, stop = parts[k]
        if last:
            xc = _padded_last(x[start:stop], (ph, ph, pw, pw), "conv.x.last")
            _gather_last(xc, (kh, kw), stride, (ho, wo), (0, 0),
                         cols[start * pixels:stop * pixels].reshape(stop - start, ho, wo, kh,
                                                                    kw, c))
            return
        xp = _padded(x[start:stop], ph, pw, "conv.x")
        _gather(xp, (kh, kw), stride, (ho, wo), (0, 0),
                _columns_view(cols[:, start * pixels:stop * pixels], c, kh, kw, stop - start,
                              ho, wo))

    parallel.parallel_for(len(parts), task, nbytes=2 * cols.nbytes)
    return cols


def conv2d_backward_weight(dy, x, weight_shape, stride, padding, cache=None, out=None,
                           precision="fp32"):
    """dw [C_out, C_in, kh, kw], as reference.conv2d_backward_weight, from the columns the
    forward kept in `cache` (or gathered again). Written into `out` when given."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight_shape
    ho, wo = dy.shape[2:]
    dtype = np.result_type(dy, x)
    kept = cache.pop("columns", None) if cache is not None else None
    cols = kept.take() if kept is not None else None
    layout = kept.key[-1] if kept is not None else None
    if cols is not None and (kept.key[:-1] != (x.shape, tuple(weight_shape), stride, padding,
                                               precision) or cols.dtype != dtype):
        _store.release(cols)
        cols = None
    stored = cols is not None
    if not stored:
        layout = "last" if _last(c, wo) else "narrow"
        cols = _columns(round_operand(x.astype(dtype, copy=False), precision), weight_shape,
                        stride, padding, (ho, wo), layout == "last")
    wide, last = layout == "wide", layout == "last"
    dy = round_operand(dy.astype(dtype, copy=False), precision)
    # dy as [o, (n, i, j)] (j over the wide rows with zeros in the junk columns): transposed
    # chunk by chunk, in parallel.
    row = w + 2 * padding[1] if wide else wo
    pixels = ho * row
    dy2 = (np.zeros if wide else np.empty)((o, n * pixels), dtype)
    parts = parallel.split(n, parallel.num_threads())

    def transpose(k):
        start, stop = parts[k]
        dest = dy2[:, start * pixels:stop * pixels].reshape(o, stop - start, ho, row)
        np.copyto(dest[:, :, :, :wo], dy[start:stop].transpose(1, 0, 2, 3))

    parallel.parallel_for(len(parts), transpose, nbytes=dy.nbytes + dy2.nbytes)
    taps = c * kh * kw
    # dw as [o, (c, r, s)], or channels-last [o, (r, s, c)] (then transposed into place)
    into_out = not last and out is not None and out.dtype == dtype and out.flags.c_contiguous
    dw = out.reshape(o, taps) if into_out else np.empty((o, taps), dtype)
    rows = parallel.chunks(o, WEIGHT_ROWS)
    spans = parallel.split(n * pixels, max(1, n * pixels // WEIGHT_PIXELS))
    partial = np.empty((len(spans), o, taps), dtype) if len(spans) > 1 else dw[None]

    def product(k):
        (r0, r1), (p0, p1) = rows[k // len(spans)], spans[k % len(spans)]
        np.matmul(dy2[r0:r1, p0:p1], cols[p0:p1] if last else cols[:, p0:p1].T,
                  out=partial[k % len(spans), r0:r1])

    parallel.parallel_for(len(rows) * len(spans), product,
                          nbytes=parallel.product_bytes(o, n * pixels, taps))
    if len(spans) > 1:
        np.sum(partial, axis=0, out=dw)           # in pixel order, whatever the threads
    if stored:
        _store.release(cols)
    if into_out:
        return out
    dw = dw.reshape(o, kh, kw, c).transpose(0, 3, 1, 2) if last else dw.reshape(weight_shape)
    if out is not None:
        out[...] = dw
        return out
    return np.ascontiguousarray(dw)


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
    last = _last(o, max(q for _, _, _, q in cols_))
    phases = []
    for a, taps_h, dh, qh in rows:
        for b, taps_w, dw_, qw in cols_:
            if not taps_h or not taps_w:
                phases.append((a, b, None, None, None, qh, qw))
                continue
            # W'[c, (o, t, t')] = w[o, c, r(t), s(t')]: the phase's taps, flipped, channels
            # swapped (channels-last: W'[c, (t, t', o)]); the taps are every stride-th, downwards
            sub = weight[:, :, taps_h[0]::-sh, taps_w[0]::-sw]
            wt = np.ascontiguousarray(sub.transpose(1, 2, 3, 0) if last else
                                      sub.transpose(1, 0, 2, 3)).reshape(c, -1)
            phases.append((a, b, wt, (len(taps_h), len(taps_w)), (dh + lo_h, dw_ + lo_w), qh, qw))
    row = lo_w + wo + hi_w                     # dy's bordered rows
    wide = not last and _wide(stride, w, row, c)    # (stride 1: one phase, every tap)
    per_image = max(o * len(t1) * len(t2) * q1 * (row if wide else q2)
                    for _, t1, _, q1 in rows for _, t2, _, q2 in cols_) * dtype.itemsize
    parts = _batch_chunks(n, max(1, per_image))

    def task(k):
        start, stop = parts[k]
        nb = stop - start
        chunk = dy[start:stop]
        if last:      # dx^T [(n, u, v), c] = cols [(n, u, v), (t, t', o)] @ W'^T, per phase
            dyc = _padded_last(chunk, (lo_h, hi_h, lo_w, hi_w), "conv.dy.last")
            for a, b, wt, taps, first, qh, qw in phases:
                dest = dx[start:stop, :, a::sh, b::sw]                # [nb, c, qh, qw]
                if wt is None:
                    dest[...] = 0
                    continue
                pixels = nb * qh * qw
                cols = parallel.scratch("conv.dycols.last", (pixels, o * taps[0] * taps[1]),
                                        dtype)
                _gather_last(dyc, taps, (1, 1), (qh, qw), first,
                             cols.reshape(nb, qh, qw, taps[0], taps[1], o))
                result = parallel.scratch("conv.dx.last", (pixels, c), dtype)
                np.matmul(cols, wt.T, out=result)
                np.copyto(dest, result.reshape(nb, qh, qw, c).transpose(0, 3, 1, 2))
            return
        if lo_h or hi_h or lo_w or hi_w or wide:
            dyp = parallel.scratch("conv.dy", (nb, o, lo_h + ho + hi_h + wide, row), dtype,
                                   zero=True)
            dyp[:, :, lo_h:lo_h + ho, lo_w:lo_w + wo] = chunk
        else:
            dyp = chunk
        if wide:
            _, _, wt, taps, first, qh, qw = phases[0]
            pixels = nb * qh * row
            cols = parallel.scratch("conv.dycols", (o * taps[0] * taps[1], pixels), dtype)
            _gather_wide(dyp, taps, qh, first, cols.reshape(o, taps[0], taps[1], nb, qh * row))
            result = parallel.scratch("conv.dx", (c, pixels), dtype)
            np.matmul(wt, cols, out=result)
            np.copyto(dx[start:stop].transpose(1, 0, 2, 3),
                      result.reshape(c, nb, qh, row)[:, :, :, :qw])
            return
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

    parallel.parallel_for(len(parts), task, nbytes=n * 2 * per_image + parallel.product_bytes(
        c, o * kh * kw, n * h * w))
    return dx
