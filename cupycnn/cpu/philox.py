"""Philox4x32-10 on the CPU, fast: reference/philox.py's blocks, bit for bit, for a run of
consecutive blocks, and dropout's mask from them (reference packed_words: element i takes word
i mod 4 of block i div 4, so a mask of n elements costs n / 4 blocks). Blocks are computed piece
by piece on the threads, the rounds done in place in eight reused uint64 buffers of a piece's
length (the counter's four words and the products' two halves).

How it is written, each choice measured against the alternatives (benchmarks/dropout_cpu.py's
figures are in docs/BENCHMARKS.md): a piece costs ~90 ufunc passes, so at the digits network's
sizes (1k-4k blocks) a call's fixed cost is most of a pass, and the code saves passes and calls:
- `out` is passed positionally: a NumPy 2 ufunc parses `out=` in ~0.4 us more per call;
- the counter's stream words are the same for every block, and its high block word for every
  block of a piece (no piece crosses a multiple of 2^32 blocks), so rounds 0-2 compute the lanes
  that are still constant as Python ints: 22 passes instead of 30;
- the products' halves are taken by shift and mask on contiguous uint64 arrays, and the last
  round's four words written into the (blocks, 4) output by truncating casts: reading the halves
  through uint32 views (strided) and computing both lanes in one array both measured slower.
"""
import numpy as np

from . import parallel
from ..reference import philox as reference

_M0, _M1 = np.array(reference.M0, np.uint64), np.array(reference.M1, np.uint64)
_W0, _W1 = int(reference.W0), int(reference.W1)
_MASK = 0xFFFFFFFF
_LOW, _32 = np.array(_MASK, np.uint64), np.array(32, np.uint64)
PIECE = 4096          # blocks: the eight buffers stay in L2 (256 KB)


def _block_words_piece(out, seed, stream, first):
    """out[j] = reference.block_words(seed, stream, first + j), uint32 [blocks, 4], for blocks
    whose counter has the same high word (first >> 32) throughout."""
    n = out.shape[0]
    c0, c1, c2, c3, p0, p1, h0, h1 = parallel.scratch("philox", (8, n), np.uint64)
    key = parallel.scratch("philox.key", (2,), np.uint64)
    ka, kb = key[0:1].reshape(()), key[1:2].reshape(())       # 0-d: the cheapest operand
    k0, k1 = seed & _MASK, seed >> 32
    s_lo, s_hi = stream & _MASK, stream >> 32
    # Round 0: c0 = the block's low word, the others are constants (c1 its high word).
    np.add(np.arange(n, dtype=np.uint64), np.uint64(first & _MASK), c0)
    q = reference.M1.item() * s_lo
    d0, d1 = (q >> 32) ^ (first >> 32) ^ k0, q & _MASK           # the new c0, c1: constants
    np.multiply(c0, _M0, p0)
    np.right_shift(p0, _32, h0)
    kb[...] = s_hi ^ k1
    np.bitwise_xor(h0, kb, c2)                                   # the new c2
    np.bitwise_and(p0, _LOW, c3)                                 # the new c3
    k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    # Round 1: c0, c1 constants.
    np.multiply(c2, _M1, p1)
    np.right_shift(p1, _32, h1)
    ka[...] = d1 ^ k0
    np.bitwise_xor(h1, ka, c0)                                   # the new c0
    np.bitwise_and(p1, _LOW, c1)                                 # the new c1
    q = reference.M0.item() * d0
    kb[...] = (q >> 32) ^ k1
    np.bitwise_xor(c3, kb, c2)                                   # the new c2
    d3 = q & _MASK                                               # the new c3: a constant
    k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    # Round 2: c3 constant.
    np.multiply(c2, _M1, p1)
    np.right_shift(p1, _32, h1)
    np.bitwise_xor(h1, c1, h1)
    ka[...] = k0
    np.bitwise_xor(h1, ka, h1)                                   # the new c0
    np.multiply(c0, _M0, p0)
    np.right_shift(p0, _32, h0)
    kb[...] = d3 ^ k1
    np.bitwise_xor(h0, kb, h0)                                   # the new c2
    np.bitwise_and(p0, _LOW, p0)                                 # the new c3
    np.bitwise_and(p1, _LOW, p1)                                 # the new c1
    c0, c1, c2, c3, p0, p1, h0, h1 = h1, p1, h0, p0, c0, c1, c2, c3
    for r in range(3, reference.ROUNDS):
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
        ka[...], kb[...] = k0, k1
        np.multiply(c2, _M1, p1)
        np.right_shift(p1, _32, h1)
        np.bitwise_xor(h1, c1, h1)
        np.bitwise_xor(h1, ka, h1)                               # the new c0
        np.multiply(c0, _M0, p0)
        np.right_shift(p0, _32, h0)
        np.bitwise_xor(h0, c3, h0)
        np.bitwise_xor(h0, kb, h0)                               # the new c2
        if r == reference.ROUNDS - 1:                            # the words: c0, c1, c2, c3
            words = out.T
            words[0][...] = h1
            words[1][...] = p1                                   # its low half: the cast
            words[2][...] = h0
            words[3][...] = p0
            return
        np.bitwise_and(p0, _LOW, p0)                             # the new c3
        np.bitwise_and(p1, _LOW, p1)                             # the new c1
        c0, c1, c2, c3, p0, p1, h0, h1 = h1, p1, h0, p0, c0, c1, c2, c3


def _pieces(first, count):
    """(start, stop) ranges of range(count) for the blocks first + start ..: one per thread at
    least, PIECE blocks at most, none crossing a multiple of 2^32 blocks."""
    pieces = []
    for start, stop in parallel.split(count, max(parallel.num_threads(), -(-count // PIECE))):
        while True:
            edge = ((((first + start) >> 32) + 1) << 32) - first
            if stop <= edge:
                pieces.append((start, stop))
                break
            pieces.append((start, edge))
            start = edge
    return pieces


def _for_blocks(first, count, task):
    """task(start, stop) on the threads for the pieces of `count` blocks from `first`."""
    pieces = _pieces(first, count)
    parallel.parallel_for(len(pieces), lambda k: task(*pieces[k]))


def block_words(seed, stream, count, start=0):
    """reference.block_words(seed, stream, start + arange(count)): uint32 [count, 4]."""
    out = np.empty((count, 4), np.uint32)
    seed, stream, start = int(seed), int(stream), int(start)
    _for_blocks(start, count,
                lambda a, b: _block_words_piece(out[a:b], seed, stream, start + a))
    return out


def keep_mask(shape, p, seed, stream):
    """reference dropout.keep_mask: element i kept when packed_uniform(seed, stream, i) >=
    float32(p), i.e. when its word's top 24 bits are at least ceil(float32(p) 2^24): when the
    word is at least that times 2^8 (none is when that is 2^32, p = 1)."""
    count = int(np.prod(shape, dtype=np.int64))
    blocks = -(-count // 4)
    threshold = int(np.ceil(float(np.float32(p)) * 2.0 ** 24)) << 8
    mask = np.empty(4 * blocks, np.bool_)
    if threshold > _MASK:
        mask.fill(False)
        return mask[:count].reshape(shape)
    least = np.array(threshold, np.uint32)
    seed, stream = int(seed), int(stream)

    def task(a, b):
        words = parallel.scratch("philox.words", (b - a, 4), np.uint32)
        _block_words_piece(words, seed, stream, a)
        np.greater_equal(words.reshape(-1), least, mask[4 * a:4 * b])

    _for_blocks(0, blocks, task)
    return mask[:count].reshape(shape)
