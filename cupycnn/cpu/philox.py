"""Philox4x32-10 on the CPU, fast: reference/philox.py's numbers, bit for bit, for a run of
consecutive indices (what dropout draws), computed piece by piece (in L2) on the threads with
the rounds done in place in eight reused uint64 buffers, and only the first output word of the
last round computed (the only one dropout and uniform() use).
"""
import numpy as np

from . import parallel
from ..reference import philox as reference

_M0, _M1 = np.uint64(reference.M0), np.uint64(reference.M1)
_W0, _W1 = int(reference.W0), int(reference.W1)
_LOW, _32 = np.uint64(0xFFFFFFFF), np.uint64(32)
PIECE = 8192


def _words_piece(out, seed, stream, start):
    """out[j] = reference.random_words(seed, stream, start + j), as uint64 (values < 2^32)."""
    n = out.size
    buf = parallel.scratch("philox", (8, n), np.uint64)
    c0, c1, c2, c3, p0, p1, h0, h1 = buf
    np.add(np.arange(n, dtype=np.uint64), np.uint64(start), out=c0)     # the index
    np.right_shift(c0, _32, out=c1)
    np.bitwise_and(c0, _LOW, out=c0)
    c2.fill(stream & 0xFFFFFFFF)
    c3.fill(stream >> 32)
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    for r in range(reference.ROUNDS):
        np.multiply(c2, _M1, out=p1)
        np.right_shift(p1, _32, out=h1)
        np.bitwise_xor(h1, c1, out=h1)
        np.bitwise_xor(h1, np.uint64(k0), out=h1)              # the new c0
        if r == reference.ROUNDS - 1:
            np.copyto(out, h1)
            return
        np.multiply(c0, _M0, out=p0)
        np.right_shift(p0, _32, out=h0)
        np.bitwise_xor(h0, c3, out=h0)
        np.bitwise_xor(h0, np.uint64(k1), out=h0)              # the new c2
        np.bitwise_and(p0, _LOW, out=p0)                       # the new c3
        np.bitwise_and(p1, _LOW, out=p1)                       # the new c1
        c0, c1, c2, c3, p0, p1, h0, h1 = h1, p1, h0, p0, c0, c1, c2, c3
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF


def random_words(seed, stream, count, start=0):
    """reference.random_words(seed, stream, start + arange(count)) as uint32."""
    out = np.empty(count, np.uint64)
    pieces = parallel.chunks(count, PIECE)
    seed, stream = int(seed), int(stream)

    def task(k):
        a, b = pieces[k]
        _words_piece(out[a:b], seed, stream, start + a)

    parallel.parallel_for(len(pieces), task)
    return out.astype(np.uint32)


def keep_mask(shape, p, seed, stream):
    """reference dropout.keep_mask: element i kept when uniform(seed, stream, i) >= float32(p),
    i.e. when its word's top 24 bits are at least ceil(float32(p) 2^24)."""
    count = int(np.prod(shape, dtype=np.int64))
    threshold = np.uint64(int(np.ceil(float(np.float32(p)) * 2.0 ** 24)))
    mask = np.empty(count, np.bool_)
    pieces = parallel.chunks(count, PIECE)
    seed, stream = int(seed), int(stream)

    def task(k):
        a, b = pieces[k]
        words = parallel.scratch("philox.words", (b - a,), np.uint64)
        _words_piece(words, seed, stream, a)
        np.right_shift(words, np.uint64(8), out=words)
        np.greater_equal(words, threshold, out=mask[a:b])

    parallel.parallel_for(len(pieces), task)
    return mask.reshape(shape)
