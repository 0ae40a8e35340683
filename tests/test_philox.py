"""The counter-based generator: known-answer vectors, and kernel == reference bit for bit."""
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import runtime
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
