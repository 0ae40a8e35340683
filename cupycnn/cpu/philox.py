"""Philox4x32-10 on the CPU, fast: reference/philox.py's blocks, bit for bit, for a run of
consecutive blocks, and dropout's mask from them (reference packed_words: element i takes word
i mod 4 of block i div 4, so a mask of n elements costs n / 4 blocks). Blocks are computed piece
by piece on the threads, the ten rounds done in place in reused uint64 buffers of a piece.

How it is written, each choice measured faster than the alternatives named (docs/BENCHMARKS.md,
issue 14's dropout): at the digits network's sizes (1k-4k blocks) a ufunc call's fixed cost is
most of a pass, so the code saves calls:
- the round's two lanes live in one array, x = [c0 | c2] (or [c2 | c0]: the round swaps them,
  and the next round multiplies by the multipliers in that order), so one call multiplies both,
  one shifts both and one masks both: 7 calls a round instead of 10;
- the previous round's products are kept whole: their low halves are the c1 and c3 that the xor
  needs, and their high halves, xored in with them, are masked off with the round's result;
- `out` is passed positionally (NumPy 2 takes longer to parse `out=`);
- the last round's four words go into the (blocks, 4) output by truncating casts.
Measured slower: the products' halves read through uint32 views (strided loops); a lane per
array (10 calls a round), also with rounds 0-2 computing the lanes that are still constant (the
stream's words) as Python ints.
"""
import functools

import numpy as np

from . import parallel
from ..reference import philox as reference

_W0, _W1 = int(reference.W0), int(reference.W1)
_MASK = 0xFFFFFFFF
_LOW, _32 = np.array(_MASK, np.uint64), np.array(32, np.uint64)
PIECE = 4096          # blocks: the three buffers stay in L2 (192 KB)


@functools.lru_cache(maxsize=16)
def _multipliers(n):
    """[M0 | M1] and [M1 | M0], n of each: the multipliers of x in either lane order."""
    m01 = np.concatenate([np.full(n, reference.M0), np.full(n, reference.M1)])
    m10 = np.concatenate([m01[n:], m01[:n]])
    m01.flags.writeable = m10.flags.writeable = False
    return m01, m10


def _block_words_piece(out, seed, stream, first):
    """out[j] = reference.block_words(seed, stream, first + j), uint32 [blocks, 4]."""
    n = out.shape[0]
    # Separate buffers: a ufunc whose operands share a base checks them for overlap, slower.
    x, prod, prev = (parallel.scratch(f"philox.{name}", (2 * n,), np.uint64)
                     for name in ("x", "prod", "prev"))
    x0, x1 = x[:n], x[n:]
    prod0, prod1, prev0, prev1 = prod[:n], prod[n:], prev[:n], prev[n:]
    ka, kb = (parallel.scratch(f"philox.{name}", (), np.uint64) for name in ("ka", "kb"))
    m01, m10 = _multipliers(n)
    # The counter: x = [c0 | c2], prev = [c1 | c3] (which the swap below reads).
    np.add(np.arange(n, dtype=np.uint64), np.uint64(first), prod0)       # the block
    np.bitwise_and(prod0, _LOW, x0)
    x1.fill(stream & _MASK)
    np.right_shift(prod0, _32, prev0)
    prev1.fill(stream >> 32)
    k0, k1 = seed & _MASK, seed >> 32
    for r in range(reference.ROUNDS):
        # x = [c0 | c2] on even rounds: prod = [p0 | p1], and the new c2 (from p0, c3 and k1)
        # and the new c0 (from p1, c1 and k0) land as [c2 | c0]; odd rounds the other way.
        even = r % 2 == 0
        np.multiply(x, m01 if even else m10, prod)
        ka[...], kb[...] = (k1, k0) if even else (k0, k1)
        np.right_shift(prod, _32, x)
        np.bitwise_xor(x0, prev1, x0)
        np.bitwise_xor(x1, prev0, x1)
        np.bitwise_xor(x0, ka, x0)
        np.bitwise_xor(x1, kb, x1)
        if r == reference.ROUNDS - 1:            # odd: x = [c0 | c2], prod = [p1 | p0]
            words = out.T
            words[0][...] = x0
            words[1][...] = prod0                                # the low half: the cast
            words[2][...] = x1
            words[3][...] = prod1
            return
        np.bitwise_and(x, _LOW, x)                               # prev's high halves
        prod, prod0, prod1, prev, prev0, prev1 = prev, prev0, prev1, prod, prod0, prod1
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK


def _for_blocks(count, task):
    """task(start, stop) for range(count) in pieces of PIECE blocks: on the threads, or here when
    there is one (a smaller split loses more to waking a thread than it gains, measured)."""
    pieces = parallel.chunks(count, PIECE)
    if len(pieces) == 1:
        task(*pieces[0])
    else:
        parallel.parallel_for(len(pieces), lambda k: task(*pieces[k]))


def block_words(seed, stream, count, start=0):
    """reference.block_words(seed, stream, start + arange(count)): uint32 [count, 4]."""
    out = np.empty((count, 4), np.uint32)
    seed, stream, start = int(seed), int(stream), int(start)
    _for_blocks(count,
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

    _for_blocks(blocks, task)
    return mask[:count].reshape(shape)
