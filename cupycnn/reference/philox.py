"""Philox4x32-10, the counter-based generator of kernels/common.cuh, in NumPy.

A counter-based generator maps (key, counter) to random bits with no state between calls, so a
kernel thread can draw the numbers for element i directly, and this reference draws exactly the
same ones: dropout masks and augmentation parameters are identical on cuda, sim and numpy.
(Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011.)

A block (counter (block, stream), key seed) gives four 32-bit words. Two layouts map an index to
a word: `random_words` takes the first word of block `index` (the augmentations: a few numbers
per image), `packed_words` word `index mod 4` of block `index div 4` (dropout: a number per
element, at a quarter of the rounds).
"""
import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
ROUNDS = 10
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def philox4x32_10(counter, key):
    """counter: uint32 array [..., 4]; key: uint32 array [..., 2] (broadcast). Returns the four
    random words [..., 4] as uint32."""
    c = np.asarray(counter, dtype=np.uint32)
    k = np.asarray(key, dtype=np.uint32)
    c0, c1, c2, c3 = (c[..., i].astype(np.uint64) for i in range(4))
    k0, k1 = k[..., 0].astype(np.uint32), k[..., 1].astype(np.uint32)
    with np.errstate(over="ignore"):
        for r in range(ROUNDS):
            p0, p1 = M0 * c0, M1 * c2
            hi0, lo0 = p0 >> _32, p0 & _LOW
            hi1, lo1 = p1 >> _32, p1 & _LOW
            c0, c1, c2, c3 = (hi1 ^ c1 ^ k0.astype(np.uint64), lo1,
                              hi0 ^ c3 ^ k1.astype(np.uint64), lo0)
            if r < ROUNDS - 1:
                k0, k1 = k0 + W0, k1 + W1
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _split64(v):
    v = np.asarray(v, dtype=np.uint64)
    return (v & _LOW).astype(np.uint32), (v >> _32).astype(np.uint32)


def block_words(seed, stream, block):
    """The four words of philox4x32_10(counter=(block, stream), key=seed), each 64-bit value
    split into two words, as uint32 [..., 4]: what `philox_block` in common.cuh returns."""
    block = np.asarray(block, dtype=np.uint64)
    b_lo, b_hi = _split64(block)
    s_lo, s_hi = _split64(np.full(block.shape, stream, dtype=np.uint64))
    k_lo, k_hi = _split64(np.uint64(seed))
    counter = np.stack([b_lo, b_hi, s_lo, s_hi], axis=-1)
    key = np.stack([np.full(block.shape, k_lo), np.full(block.shape, k_hi)], axis=-1)
    return philox4x32_10(counter, key)


def random_words(seed, stream, index):
    """One word per index, the first of its own block: block_words(seed, stream, index)[..., 0],
    what `philox_word` in common.cuh returns (the augmentations' draws)."""
    return block_words(seed, stream, index)[..., 0]


def packed_words(seed, stream, index):
    """One word per index, four indices to a block: index i takes word i mod 4 of
    block_words(seed, stream, i div 4) (cuRAND's curand_uniform4 layout, PyTorch's fused
    dropout), so n numbers cost n / 4 blocks (dropout's draws)."""
    index = np.asarray(index, dtype=np.uint64)
    words = block_words(seed, stream, index >> np.uint64(2))
    return np.take_along_axis(words, (index & np.uint64(3)).astype(np.intp)[..., None],
                              axis=-1)[..., 0]


def to_uniform(words):
    """Uniform float32 in [0, 1) from uint32 words: the top 24 bits times 2^-24 (exact in float32,
    so kernel and reference agree bit for bit): `philox_unit` in common.cuh."""
    return ((np.asarray(words, dtype=np.uint32) >> np.uint32(8)).astype(np.float32)
            * np.float32(2.0 ** -24))


def uniform(seed, stream, index):
    """to_uniform(random_words(seed, stream, index)): `philox_uniform` in common.cuh."""
    return to_uniform(random_words(seed, stream, index))


def packed_uniform(seed, stream, index):
    """to_uniform(packed_words(seed, stream, index)): dropout's numbers."""
    return to_uniform(packed_words(seed, stream, index))
