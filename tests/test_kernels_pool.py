"""kernels/pool.cu against reference/pool.py on every kernel device, and the reference against a
direct loop transcription of PyTorch's CPU pooling (ties, padding, -inf, NaN)."""
import numpy as np
import pytest

import cupycnn
from cupycnn import reference
from cupycnn.ops import pool
from cupycnn.reference.pool import geometry, output_size
from helpers import assert_matches, randn

# (N, C, H, W, kernel_size, stride, padding): batch 1, odd and non-square planes, channel counts
# 1, 3, 5, 17; kernels 1, 2, 3, 5 and non-square; strides 1, 2, 3 and unequal (including
# stride > kernel: skipped elements); padding 0, 1, 2 and unequal. Overlapping windows
# (stride < kernel) in k3s2, k5s1, (3,2)/(2,1).
CONFIGS = [
    (1, 3, 5, 5, 1, 1, 0),
    (2, 5, 8, 6, 2, None, 0),
    (1, 17, 9, 7, 3, 2, 1),
    (2, 3, 11, 10, 5, 1, 2),
    (1, 5, 7, 9, (3, 2), (2, 1), (1, 0)),
    (3, 3, 6, 13, (2, 5), (1, 3), (0, 2)),
    (2, 5, 10, 7, 2, 3, 1),
    (1, 1, 1, 1, 1, 1, 0),
    (1, 17, 33, 35, 3, 2, 0),
]


def _id(config):
    n, c, h, w, k, s, p = config
    return f"{n}x{c}x{h}x{w}-k{k}-s{s}-p{p}".replace(" ", "")


def _f64(a):
    return np.asarray(a, np.float64)


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_max_pool2d(kernel_device, rng, config):
    n, c, h, w, k, s, p = config
    x = randn(rng, n, c, h, w)
    y, argmax = pool.max_pool2d_forward(cupycnn.asarray(x), k, s, p)
    ref_y, ref_argmax = reference.pool.max_pool2d_forward(_f64(x), k, s, p)
    assert_matches(y, ref_y, "y")
    np.testing.assert_array_equal(cupycnn.asnumpy(argmax), ref_argmax)
    assert cupycnn.asnumpy(argmax).dtype == np.int32

    dy = randn(rng, *ref_y.shape)
    dx = pool.max_pool2d_backward(cupycnn.asarray(dy), cupycnn.asarray(ref_argmax), (h, w), k, s, p)
    assert_matches(dx, reference.pool.max_pool2d_backward(_f64(dy), ref_argmax, (h, w)), "dx")


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_avg_pool2d(kernel_device, rng, config):
    n, c, h, w, k, s, p = config
    x = randn(rng, n, c, h, w)
    y = pool.avg_pool2d_forward(cupycnn.asarray(x), k, s, p)
    assert_matches(y, reference.pool.avg_pool2d_forward(_f64(x), k, s, p), "y")

    dy = randn(rng, *y.shape)
    dx = pool.avg_pool2d_backward(cupycnn.asarray(dy), (h, w), k, s, p)
    assert_matches(dx, reference.pool.avg_pool2d_backward(_f64(dy), (h, w), k, s, p), "dx")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 7), (1, 17, 5, 9), (3, 5, 1, 40),
                                   (2, 9, 12, 11)], ids=str)
def test_global_avg_pool2d(kernel_device, rng, shape):
    x = randn(rng, *shape)
    y = pool.global_avg_pool2d_forward(cupycnn.asarray(x))
    assert_matches(y, reference.pool.global_avg_pool2d_forward(_f64(x)), "y")

    dy = randn(rng, *shape[:2])
    dx = pool.global_avg_pool2d_backward(cupycnn.asarray(dy), shape[2:])
    assert_matches(dx, reference.pool.global_avg_pool2d_backward(_f64(dy), shape[2:]), "dx")


def test_grid_stride_loops_cover_more_elements_than_threads(kernel_device, rng, monkeypatch):
    """With the grid capped at 2 blocks, every thread loops over many elements."""
    monkeypatch.setattr(pool, "ELEMENTWISE_MAX_BLOCKS", 2)
    n, c, h, w, k, s, p = 2, 5, 13, 11, 3, 2, 1
    x, (h_out, w_out) = randn(rng, n, c, h, w), output_size((h, w), *geometry(k, s, p))
    dy = randn(rng, n, c, h_out, w_out)
    y, argmax = pool.max_pool2d_forward(cupycnn.asarray(x), k, s, p)
    ref_y, ref_argmax = reference.pool.max_pool2d_forward(_f64(x), k, s, p)
    assert_matches(y, ref_y, "max y")
    np.testing.assert_array_equal(cupycnn.asnumpy(argmax), ref_argmax)
    assert_matches(pool.max_pool2d_backward(cupycnn.asarray(dy), argmax, (h, w), k, s, p),
                   reference.pool.max_pool2d_backward(_f64(dy), ref_argmax, (h, w)), "max dx")
    assert_matches(pool.avg_pool2d_forward(cupycnn.asarray(x), k, s, p),
                   reference.pool.avg_pool2d_forward(_f64(x), k, s, p), "avg y")
    assert_matches(pool.avg_pool2d_backward(cupycnn.asarray(dy), (h, w), k, s, p),
                   reference.pool.avg_pool2d_backward(_f64(dy), (h, w), k, s, p), "avg dx")
    dy_global = randn(rng, n, c)
    assert_matches(pool.global_avg_pool2d_backward(cupycnn.asarray(dy_global), (h, w)),
                   reference.pool.global_avg_pool2d_backward(_f64(dy_global), (h, w)), "global dx")


# ------------------------------------------------------------------------------ ties, -inf, NaN

@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 1))],
                         ids=str)
def test_max_pool2d_ties_go_to_the_first_maximum(kernel_device, rng, k, s, p):
    """Inputs from {0, 1, 2}: most windows hold several maxima; the kernel picks the same one
    as the reference (the first in window order), and backward sends dy there only."""
    x = rng.integers(0, 3, size=(2, 3, 7, 8)).astype(np.float32)
    y, argmax = pool.max_pool2d_forward(cupycnn.asarray(x), k, s, p)
    ref_y, ref_argmax = reference.pool.max_pool2d_forward(_f64(x), k, s, p)
    assert_matches(y, ref_y)
    np.testing.assert_array_equal(cupycnn.asnumpy(argmax), ref_argmax)
    dy = randn(rng, *ref_y.shape)
    assert_matches(pool.max_pool2d_backward(cupycnn.asarray(dy), argmax, (7, 8), k, s, p),
                   reference.pool.max_pool2d_backward(_f64(dy), ref_argmax, (7, 8)))


def test_max_pool2d_tie_rule_by_hand(kernel_device):
    """A constant plane: every window's first real element (top-left, padding skipped) wins;
    an all -inf plane likewise (a padded -inf never wins)."""
    for value in (1.0, -np.inf):
        x = np.full((1, 1, 4, 5), value, np.float32)
        y, argmax = pool.max_pool2d_forward(cupycnn.asarray(x), 2, 2, 0)
        assert cupycnn.asnumpy(argmax)[0, 0].tolist() == [[0, 2], [10, 12]]
        assert (cupycnn.asnumpy(y) == value).all()
        # kernel 3, stride 2, padding 1: windows start at rows -1, 1 and columns -1, 1, 3.
        y, argmax = pool.max_pool2d_forward(cupycnn.asarray(x), 3, 2, 1)
        assert cupycnn.asnumpy(argmax)[0, 0].tolist() == [[0, 1, 3], [5, 6, 8]]
    # The maximum of 9 overlapping windows (k3 s1 p1) receives the sum of their gradients.
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 5.0
    _, argmax = pool.max_pool2d_forward(cupycnn.asarray(x), 3, 1, 1)
    assert (cupycnn.asnumpy(argmax) == 4).all()
    dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    dx = cupycnn.asnumpy(pool.max_pool2d_backward(cupycnn.asarray(dy), argmax, (3, 3), 3, 1, 1))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 45.0
    np.testing.assert_array_equal(dx, expected)


def test_max_pool2d_nan_propagates(kernel_device, rng):
    x = randn(rng, 1, 2, 6, 6)
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = x[0, 1, 4, 5] = np.nan
    y, argmax = pool.max_pool2d_forward(cupycnn.asarray(x), 3, 2, 1)
    ref_y, ref_argmax = reference.pool.max_pool2d_forward(_f64(x), 3, 2, 1)
    assert np.isnan(ref_y).sum() == 5
    np.testing.assert_array_equal(cupycnn.asnumpy(y), ref_y.astype(np.float32))
    np.testing.assert_array_equal(cupycnn.asnumpy(argmax), ref_argmax)
    assert ref_argmax[0, 0, 0, 0] == 6 and ref_argmax[0, 0, 0, 1] == 7   # the first NaN


def _pytorch_loops(x, kernel_size, stride, padding):
    """PyTorch's CPU max_pool2d_with_indices and avg_pool2d (count_include_pad=True), loop for
    loop (aten/src/ATen/native/cpu/MaxPoolKernel.cpp, AvgPoolKernel.cpp), except that a NaN
    keeps the first NaN's index where PyTorch keeps the last."""
    (kh, kw), (sh, sw), (ph, pw) = geometry(kernel_size, stride, padding)
    n, c, h, w = x.shape
    oh_, ow_ = output_size((h, w), (kh, kw), (sh, sw), (ph, pw))
    y_max, idx, y_avg = (np.zeros((n, c, oh_, ow_)), np.zeros((n, c, oh_, ow_), np.int64),
                         np.zeros((n, c, oh_, ow_)))
    for b in range(n):
        for ch in range(c):
            for oh in range(oh_):
                for ow in range(ow_):
                    h0, w0 = oh * sh - ph, ow * sw - pw
                    h1, w1 = min(h0 + kh, h), min(w0 + kw, w)
                    pool_size = (min(h0 + kh, h + ph) - h0) * (min(w0 + kw, w + pw) - w0)
                    h0, w0 = max(h0, 0), max(w0, 0)
                    best, best_index, total = -np.inf, h0 * w + w0, 0.0
                    for i in range(h0, h1):
                        for j in range(w0, w1):
                            v = x[b, ch, i, j]
                            total += v
                            if v > best or (np.isnan(v) and not np.isnan(best)):
                                best, best_index = v, i * w + j
                    y_max[b, ch, oh, ow], idx[b, ch, oh, ow] = best, best_index
                    y_avg[b, ch, oh, ow] = total / pool_size
    return y_max, idx, y_avg


@pytest.mark.parametrize("config", CONFIGS[:7], ids=_id)
def test_reference_equals_pytorch_loops(rng, config):
    n, c, h, w, k, s, p = config
    x = rng.integers(-2, 3, size=(n, c, h, w)).astype(np.float64)     # plenty of ties
    x[rng.random(x.shape) < 0.05] = -np.inf
    y_max, idx, y_avg = _pytorch_loops(x, k, s, p)
    ref_y, ref_argmax = reference.pool.max_pool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(ref_y, y_max)
    np.testing.assert_array_equal(ref_argmax, idx)
    finite = np.where(np.isinf(x), 0.0, x)
    np.testing.assert_allclose(reference.pool.avg_pool2d_forward(finite, k, s, p),
                               _pytorch_loops(finite, k, s, p)[2], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("device", ["sim", "numpy"])
def test_bad_arguments_name_the_op_and_the_shapes(device, rng):
    cupycnn.use(device)
    x = cupycnn.asarray(randn(rng, 2, 3, 5, 4))
    with pytest.raises(ValueError, match=r"max_pool2d_forward: x must have shape "
                                         r"\(N, C, H, W\), got \(3, 5, 4\)"):
        pool.max_pool2d_forward(x[0], 2)
    with pytest.raises(ValueError, match=r"avg_pool2d_forward: padding must be between 0 and "
                                         r"half the kernel size"):
        pool.avg_pool2d_forward(x, 3, 1, 2)
    with pytest.raises(ValueError, match=r"max_pool2d_forward: input of spatial size \(5, 4\) "
                                         r"is too small for kernel_size=\(6, 6\)"):
        pool.max_pool2d_forward(x, 6)
    with pytest.raises(ValueError, match="stride must be positive"):
        pool.max_pool2d_forward(x, 2, 0)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        pool.max_pool2d_forward(x, (2, 2, 2))
    dy = cupycnn.asarray(randn(rng, 2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"max_pool2d_backward: argmax must be int32"):
        pool.max_pool2d_backward(dy, cupycnn.asarray(np.zeros((2, 3, 2, 2), np.int64)), (5, 4), 2)
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: dy must have shape "
                                         r"\(N, C, 2, 2\), got \(2, 3, 2, 3\)"):
        pool.avg_pool2d_backward(cupycnn.asarray(randn(rng, 2, 3, 2, 3)), (5, 4), 2)
    with pytest.raises(ValueError, match=r"global_avg_pool2d_backward: dy must have shape "
                                         r"\(N, C\), got \(2, 3, 1, 1\)"):
        pool.global_avg_pool2d_backward(cupycnn.asarray(randn(rng, 2, 3, 1, 1)), (5, 4))
