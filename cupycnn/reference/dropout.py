"""Inverted dropout: the specification of kernels/dropout.cu.

Element i (flat, C order) draws u_i = philox.packed_uniform(seed, stream, i): word i mod 4 of
the Philox4x32-10 block with counter (i div 4, stream) and key seed, its top 24 bits times 2^-24
(uniform in [0, 1) on the 24-bit grid; four elements share a block, as cuRAND's curand_uniform4
and PyTorch's fused dropout draw them, so a mask of n elements costs n / 4 blocks). It is kept
when u_i >= p (p rounded to float32, as the kernel receives it, so the comparison is the same
bit for bit):

    forward:  y  = x  * mask / (1 - p)       (p = 1: y = 0)
    backward: dx = dy * mask / (1 - p)       the same mask, drawn again from (seed, stream)

One (seed, stream) gives the same mask on cuda, sim and numpy. Computes in the input's dtype.
"""
import numpy as np

from . import philox


def keep_mask(shape, p, seed, stream):
    """Boolean mask of the kept elements for an array of `shape`."""
    size = int(np.prod(shape, dtype=np.int64))
    u = philox.packed_uniform(seed, stream, np.arange(size, dtype=np.uint64))
    return (u >= np.float32(p)).reshape(shape)


def scale(p):
    """1 / (1 - p), the factor that keeps the expectation; 0 when p = 1 (nothing is kept)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


def _apply(a, p, seed, stream):
    factor = a.dtype.type(scale(p))
    return np.where(keep_mask(a.shape, p, seed, stream), a * factor, a.dtype.type(0))


def dropout_forward(x, p, seed, stream):
    """y = x * mask / (1 - p)."""
    return _apply(x, p, seed, stream)


def dropout_backward(dy, p, seed, stream):
    """dx = dy * mask / (1 - p), the mask recomputed from (seed, stream)."""
    return _apply(dy, p, seed, stream)
