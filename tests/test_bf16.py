"""BF16 storage (ops/_storage.py): every kernel of the step on BF16 activations is, bit for bit,
its float32 version on the decoded values with the result rounded to BF16 once, on numpy and
on sim in natural, reversed and random thread order (cuda where a GPU is usable). Per-channel
statistics, parameter gradients and the loss stay float32 and must equal the float32 version's
exactly.

The float32 path is itself checked against the float64 reference by the kernel tests; what these
tests add is that the BF16 variants are the same template over another storage type: FP32
arithmetic inside, one rounding at the store.
"""
import numpy as np
import pytest

import cupycnn
from conftest import _kernel_device_params, _test_seed
from cupycnn import sim
from cupycnn.ops import _storage
from cupycnn.ops import elementwise as ew
from cupycnn.reference import rounding
from helpers import randn

BF16 = _storage.BF16


@pytest.fixture(params=[pytest.param(("numpy", None), id="numpy")] + _kernel_device_params())
def any_device(request):
    name, order = request.param
    cupycnn.use(name)
    if name == "sim":
        sim.set_thread_order(order, seed=_test_seed(request.node.nodeid))
    cupycnn.devices.set_poison(name != "numpy")
    return name


def bf16_pair(host):
    """(the BF16 device array, the float32 device array of its exact values)."""
    bits = rounding.bf16_bits(host)
    return cupycnn.asarray(bits), cupycnn.asarray(rounding.bf16_to_float32(bits))


def assert_bf16_of(got, expected_f32, what):
    """got (BF16) must be expected_f32 (float32, computed from the same values) rounded."""
    got = np.asarray(cupycnn.asnumpy(got))
    assert got.dtype == BF16, f"{what}: stored as {got.dtype}, not BF16"
    want = rounding.bf16_bits(np.asarray(cupycnn.asnumpy(expected_f32)))
    np.testing.assert_array_equal(got, want, err_msg=what)


def assert_same(got, want, what):
    got, want = np.asarray(cupycnn.asnumpy(got)), np.asarray(cupycnn.asnumpy(want))
    assert got.dtype == want.dtype, f"{what}: {got.dtype} vs {want.dtype}"
    np.testing.assert_array_equal(got, want, err_msg=what)


SHAPES = [(3, 5, 7), (2, 17, 4, 4), (1,), (1000,)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_casts_round_to_nearest_even_and_back_exactly(any_device, rng, shape):
    x = randn(rng, *shape) * 100
    x.flat[0] = np.float32(1.0 + 2.0 ** -8)              # a tie: even (1.0)
    if x.size > 2:
        x.flat[1], x.flat[2] = np.inf, np.nan
    b = _storage.to_bf16(cupycnn.asarray(x))
    np.testing.assert_array_equal(cupycnn.asnumpy(b), rounding.bf16_bits(x))
    back = _storage.to_float32(b)
    np.testing.assert_array_equal(cupycnn.asnumpy(back), rounding.round_bf16(x))
    assert _storage.to_bf16(b) is b


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_elementwise(any_device, rng, shape):
    (xb, xf), (yb, yf), (db, df) = (bf16_pair(randn(rng, *shape)) for _ in range(3))
    assert_bf16_of(ew.relu_forward(xb), ew.relu_forward(xf), "relu_forward")
    assert_bf16_of(ew.relu_backward(xb, db), ew.relu_backward(xf, df), "relu_backward")
    assert_bf16_of(ew.add(xb, yb), ew.add(xf, yf), "add")


def test_storages_do_not_mix(rng):
    cupycnn.use("sim")
    xb, xf = bf16_pair(randn(rng, 4, 4))
    with pytest.raises(ValueError, match="add: b is float32 but a is uint16"):
        ew.add(xb, xf)


POOL_CASES = [((2, 3, 7, 9), 3, 2, 1), ((1, 4, 8, 8), 2, 2, 0), ((2, 2, 5, 5), 3, 1, 1)]


@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CASES, ids=str)
def test_pooling(any_device, rng, shape, kernel, stride, padding):
    from cupycnn.ops import pool
    xb, xf = bf16_pair(randn(rng, *shape))
    yb, argb = pool.max_pool2d_forward(xb, kernel, stride, padding)
    yf, argf = pool.max_pool2d_forward(xf, kernel, stride, padding)
    assert_bf16_of(yb, yf, "max_pool2d_forward")
    assert_same(argb, argf, "argmax")
    db, df = bf16_pair(randn(rng, *yf.shape))
    size = shape[2:]
    assert_bf16_of(pool.max_pool2d_backward(db, argb, size, kernel, stride, padding),
                   pool.max_pool2d_backward(df, argf, size, kernel, stride, padding),
                   "max_pool2d_backward")
    assert_bf16_of(pool.avg_pool2d_forward(xb, kernel, stride, padding),
                   pool.avg_pool2d_forward(xf, kernel, stride, padding), "avg_pool2d_forward")
    assert_bf16_of(pool.avg_pool2d_backward(db, size, kernel, stride, padding),
                   pool.avg_pool2d_backward(df, size, kernel, stride, padding),
                   "avg_pool2d_backward")
    assert_bf16_of(pool.global_avg_pool2d_forward(xb), pool.global_avg_pool2d_forward(xf),
                   "global_avg_pool2d_forward")
    gb, gf = bf16_pair(randn(rng, *shape[:2]))
    assert_bf16_of(pool.global_avg_pool2d_backward(gb, size),
                   pool.global_avg_pool2d_backward(gf, size), "global_avg_pool2d_backward")
