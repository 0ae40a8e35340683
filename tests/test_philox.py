"""The counter-based generator: known-answer vectors, and kernel == reference bit for bit."""
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import reference, runtime
from cupycnn.reference import philox

PROBES = Path(__file__).parent / "kernels" / "emulator_probes.cu"

# Random123's known-answer tests for philox4x32_10.
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


def test_reference_matches_known_answers():
    for counter, key, expected in KAT:
        got = philox.philox4x32_10(np.array(counter, np.uint32), np.array(key, np.uint32))
        assert got.tolist() == expected


def test_kernel_matches_known_answers(kernel_device):
    module = runtime.load_module(path=PROBES)
    counters = cupycnn.asarray(np.array([c for c, _, _ in KAT], np.uint32).ravel())
    keys = cupycnn.asarray(np.array([k for _, k, _ in KAT], np.uint32).ravel())
    out = cupycnn.asarray(np.zeros(4 * len(KAT), np.uint32))
    module.get_function("philox_raw")((1,), (32,), (counters, keys, out, np.int32(len(KAT))))
    assert cupycnn.asnumpy(out).reshape(-1, 4).tolist() == [e for _, _, e in KAT]


@pytest.mark.parametrize("seed, stream, first", [(0, 0, 0), (2**63 + 12345, 7, 2**32 - 100)])
def test_kernel_words_and_uniforms_equal_the_reference(kernel_device, seed, stream, first):
    module = runtime.load_module(path=PROBES)
    n = 1000
    words = cupycnn.asarray(np.zeros(n, np.uint32))
    uniforms = cupycnn.asarray(np.zeros(n, np.float32))
    module.get_function("philox_probe")((4,), (256,), (np.uint64(seed), np.uint64(stream),
                                                        np.uint64(first), words, uniforms,
                                                        np.int32(n)))
    index = np.arange(first, first + n, dtype=np.uint64)
    np.testing.assert_array_equal(cupycnn.asnumpy(words), philox.random_words(seed, stream, index))
    u = philox.uniform(seed, stream, index)
    np.testing.assert_array_equal(cupycnn.asnumpy(uniforms), u)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.05


def _philox_of_block(seed, stream, block):
    """The four words of one block, the counter built here word by word (not by the layout code
    under test) and fed to the known-answer-tested philox4x32_10."""
    mask = 0xFFFFFFFF
    counter = np.array([block & mask, block >> 32, stream & mask, stream >> 32], np.uint32)
    return philox.philox4x32_10(counter, np.array([seed & mask, seed >> 32], np.uint32)).tolist()


INDICES = [0, 1, 2, 3, 4, 5, 6, 7, 2**34 - 1, 2**34, 2**34 + 3, 2**63 + 6, 2**64 - 5, 2**64 - 1]


def test_packed_words_take_four_words_of_a_block_and_random_words_one():
    """Dropout's layout: index i is word i mod 4 of block i div 4 (near 2^34, where the block's
    high counter word starts, and at the top of the 64-bit range); the augmentations' layout:
    index i is the first word of block i. The uniforms are the words' top 24 bits."""
    seed, stream = 2**63 + 12345, 2**40 + 7
    index = np.array(INDICES, np.uint64)
    packed = [_philox_of_block(seed, stream, i // 4)[i % 4] for i in INDICES]
    first = [_philox_of_block(seed, stream, i)[0] for i in INDICES]
    assert philox.packed_words(seed, stream, index).tolist() == packed
    assert philox.random_words(seed, stream, index).tolist() == first
    np.testing.assert_array_equal(philox.packed_uniform(seed, stream, index),
                                  np.array([w >> 8 for w in packed], np.float32) * 2.0**-24)
    assert philox.block_words(seed, stream, np.uint64(2**62 - 1)).tolist() == \
        _philox_of_block(seed, stream, 2**62 - 1)


def test_dropout_mask_is_four_elements_to_a_block():
    """reference.dropout.keep_mask, bit for bit, from blocks computed here (it fails on a layout
    of a block per element); 4k + 1, 4k + 2, 4k + 3 elements take the first words of the last
    block."""
    seed, stream, p = 77, 5, 0.5
    for n in (1, 2, 3, 4, 5, 11):
        words = [w for b in range(-(-n // 4)) for w in _philox_of_block(seed, stream, b)][:n]
        expected = [(w >> 8) * 2.0**-24 >= p for w in words]
        assert reference.dropout.keep_mask((n,), p, seed, stream).tolist() == expected


def test_kernel_blocks_and_units_equal_the_reference(kernel_device):
    """common.cuh's philox_block (all four words) and philox_unit, at blocks where the counter's
    high word starts and at the top of the range dropout reaches (2^64 / 4)."""
    module = runtime.load_module(path=PROBES)
    n = 300
    for seed, stream, first in ((5, 9, 2**32 - 150), (2**64 - 1, 2**64 - 1, 2**62 - n)):
        words = cupycnn.asarray(np.zeros((n, 4), np.uint32))
        uniforms = cupycnn.asarray(np.zeros((n, 4), np.float32))
        module.get_function("philox_block_probe")((2,), (256,), (
            np.uint64(seed), np.uint64(stream), np.uint64(first), words, uniforms, np.int32(n)))
        expected = philox.block_words(seed, stream, np.arange(first, first + n, dtype=np.uint64))
        np.testing.assert_array_equal(cupycnn.asnumpy(words), expected)
        np.testing.assert_array_equal(cupycnn.asnumpy(uniforms), philox.to_uniform(expected))
