"""kernels/dropout.cu against reference/dropout.py on every kernel device: the mask from Philox
is the same bit for bit, so the kernel's float32 output equals the float32 reference exactly."""
import numpy as np
import pytest

import cupycnn
from cupycnn import reference, runtime
from cupycnn.ops import dropout
from helpers import assert_matches, randn

CASES = [((1,), 0.5), ((7,), 0.0), ((3, 5, 7), 0.3), ((2, 3, 17, 19), 0.5), ((1000,), 1.0),
         ((257, 31), 0.9)]


def _seed_stream(rng):
    return int(rng.integers(0, 2**63)) * 2 + 1, int(rng.integers(0, 2**40))   # full 64 bits


@pytest.mark.parametrize("shape, p", CASES, ids=str)
def test_dropout_forward_backward(kernel_device, rng, shape, p):
    seed, stream = _seed_stream(rng)
    x, dy = randn(rng, *shape), randn(rng, *shape)
    y = dropout.dropout_forward(cupycnn.asarray(x), p, seed, stream)
    dx = dropout.dropout_backward(cupycnn.asarray(dy), p, seed, stream)
    assert_matches(y, reference.dropout.dropout_forward(x.astype(np.float64), p, seed, stream),
                   "y")
    assert_matches(dx, reference.dropout.dropout_backward(dy.astype(np.float64), p, seed, stream),
                   "dx")
    # Same mask, same float32 product: bit for bit equal to the float32 reference.
    np.testing.assert_array_equal(cupycnn.asnumpy(y),
                                  reference.dropout.dropout_forward(x, p, seed, stream))
    np.testing.assert_array_equal(cupycnn.asnumpy(dx),
                                  reference.dropout.dropout_backward(dy, p, seed, stream))


def test_grid_stride_loop_covers_more_elements_than_threads(kernel_device, rng, monkeypatch):
    monkeypatch.setattr(runtime, "ELEMENTWISE_MAX_BLOCKS", 2)
    x = randn(rng, 5 * 2 * 256 + 17)
    y = dropout.dropout_forward(cupycnn.asarray(x), 0.4, 99, 3)
    assert_matches(y, reference.dropout.dropout_forward(x.astype(np.float64), 0.4, 99, 3))
    dx = dropout.dropout_backward(cupycnn.asarray(x), 0.4, 99, 3)
    assert_matches(dx, reference.dropout.dropout_backward(x.astype(np.float64), 0.4, 99, 3))


def test_numpy_and_sim_masks_are_bit_identical(rng):
    seed, stream = _seed_stream(rng)
    x = np.ones((4, 3, 11, 13), np.float32)
    results = {}
    for device in ("numpy", "sim"):
        cupycnn.use(device)
        y = cupycnn.asnumpy(dropout.dropout_forward(cupycnn.asarray(x), 0.5, seed, stream))
        results[device] = y != 0
    np.testing.assert_array_equal(results["sim"], results["numpy"])
    np.testing.assert_array_equal(results["numpy"],
                                  reference.dropout.keep_mask(x.shape, 0.5, seed, stream))
    assert 0.3 < results["numpy"].mean() < 0.7


def test_mask_depends_on_seed_and_stream():
    cupycnn.use("sim")
    x = cupycnn.asarray(np.ones(4096, np.float32))
    masks = [cupycnn.asnumpy(dropout.dropout_forward(x, 0.5, seed, stream)) != 0
             for seed, stream in [(1, 0), (1, 1), (2, 0), (1, 0)]]
    np.testing.assert_array_equal(masks[0], masks[3])          # same (seed, stream): same mask
    for other in masks[1:3]:
        assert 0.4 < (masks[0] != other).mean() < 0.6           # independent masks


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_statistics_fraction_kept_and_mean(rng, p):
    """Over 2^17 elements: the kept fraction is 1 - p and the mean of x is preserved, within
    five standard deviations of the binomial counts."""
    cupycnn.use("sim")
    n = 2**17
    seed, stream = _seed_stream(rng)
    y = cupycnn.asnumpy(dropout.dropout_forward(cupycnn.asarray(np.ones(n, np.float32)), p, seed,
                                                stream)).astype(np.float64)
    kept = (y != 0).mean()
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 5 * np.sqrt(p / ((1 - p) * n))


@pytest.mark.parametrize("device", ["sim", "numpy"])
def test_bad_arguments(device, rng):
    cupycnn.use(device)
    x = cupycnn.asarray(randn(rng, 3, 4))
    with pytest.raises(ValueError, match="dropout_forward: dropout probability has to be between "
                                         "0 and 1, but got 1.5"):
        dropout.dropout_forward(x, 1.5, 0, 0)
    with pytest.raises(ValueError, match=r"dropout_backward: seed must be an int in \[0, 2\^64\)"):
        dropout.dropout_backward(x, 0.5, -1, 0)
    with pytest.raises(ValueError, match="dropout_forward: stream must be an int"):
        dropout.dropout_forward(x, 0.5, 0, 2**64)
