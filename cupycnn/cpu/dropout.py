"""Inverted dropout on the CPU, fast: reference/dropout.py's results, bit for bit, with the
mask drawn by cupycnn.cpu.philox and kept for the backward (`cache`) instead of drawn again:
on a CPU the Philox rounds cost far more than the byte per element the mask takes.
Kept elements are x / (1 - p) and dropped ones +0, also where x is inf or NaN, as in the
reference's np.where (arrays of one piece take np.where itself; larger ones are scaled and their
bits ANDed with the mask's, piece by piece on the threads).
"""
import numpy as np

from . import parallel
from . import philox
from ..reference import dropout as reference

_BITS = {4: np.int32, 8: np.int64}


def _apply(a, p, mask):
    factor = a.dtype.type(reference.scale(p))
    pieces = parallel.flat_pieces(a.size)
    if len(pieces) == 1:             # small (the digits network's): NumPy's where is quicker
        return np.where(mask, a * factor, a.dtype.type(0))
    out = np.multiply(a, factor)
    bits = _BITS[a.itemsize]
    flat_out, flat_mask = out.reshape(-1).view(bits), mask.reshape(-1)

    def task(k):
        start, stop = pieces[k]
        ones = parallel.scratch("dropout.bits", (stop - start,), bits)
        np.copyto(ones, flat_mask[start:stop], casting="unsafe")
        np.negative(ones, out=ones)
        np.bitwise_and(flat_out[start:stop], ones, out=flat_out[start:stop])

    parallel.parallel_for(len(pieces), task)
    return out


def dropout_forward(x, p, seed, stream, cache=None):
    """y = x * mask / (1 - p); the mask is kept in `cache` when one is given."""
    mask = philox.keep_mask(x.shape, p, seed, stream)
    if cache is not None:
        cache["mask"] = (mask, (p, seed, stream))
    return _apply(x, p, mask)


def dropout_backward(dy, p, seed, stream, cache=None):
    """dx = dy * mask / (1 - p) with the forward's mask (from `cache`, else drawn again)."""
    kept = cache.pop("mask", None) if cache is not None else None
    if kept is not None and kept[1] == (p, seed, stream) and kept[0].shape == dy.shape:
        mask = kept[0]
    else:
        mask = philox.keep_mask(dy.shape, p, seed, stream)
    return _apply(dy, p, mask)
