"""The numpy device's CPU path (cupycnn/cpu) against its specification, the references.

Each function of cupycnn/cpu is held to the reference function of the same name: in float64 to
float64 rounding (relative error under 1e-12: the same sums, in another order), in float32 to
float32 tolerance, and bit for bit where the operations are the same (ReLU, add, max pooling,
Philox, dropout, the optimizers). Then the dispatch (float32 takes the path, float64 and
set_enabled(False) the reference), the thread count (results independent of it), the column
cache, and whole training steps of both paths.
"""
import threading

import numpy as np
import pytest

import cupycnn
from cupycnn import cpu, layers, models, ops, optim
from cupycnn.cpu import batchnorm as fast_bn
from cupycnn.cpu import conv2d as fast_conv
from cupycnn.cpu import dropout as fast_dropout
from cupycnn.cpu import elementwise as fast_elementwise
from cupycnn.cpu import gemm as fast_gemm
from cupycnn.cpu import optim as fast_optim
from cupycnn.cpu import parallel, philox as fast_philox
from cupycnn.cpu import pool as fast_pool
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.reference import batchnorm as ref_bn
from cupycnn.reference import conv2d as ref_conv
from cupycnn.reference import dropout as ref_dropout
from cupycnn.reference import elementwise as ref_elementwise
from cupycnn.reference import gemm as ref_gemm
from cupycnn.reference import optim as ref_optim
from cupycnn.reference import philox as ref_philox
from cupycnn.reference import pool as ref_pool

TOLERANCE = {np.float64: 1e-12, np.float32: 2e-6}


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, monkeypatch):
    """The thread count; with 2, the test's small arrays are split over the threads too."""
    cpu.set_num_threads(request.param)
    monkeypatch.setattr(parallel, "MIN_TASK_BYTES", 1)
    yield request.param
    cpu.set_num_threads(None)


def close(actual, expected, dtype, scale=None):
    """max |actual - expected| / max |expected| under the dtype's tolerance."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = np.abs(expected).max() if scale is None else scale
    error = np.abs(actual.astype(np.float64) - expected).max() / max(scale, 1e-300)
    assert error < TOLERANCE[dtype], error


def bits(a):
    return a.view({4: np.int32, 8: np.int64}[a.itemsize])


# (N, C, H, W, C_out, kh, kw, stride, padding): 3x3 same and strided, 1x1 strided (phases with
# no tap), a 7x7 stem, rectangular kernels and strides, strides past the kernel, rows no
# window reaches.
CONV_CASES = [
    (3, 4, 9, 7, 5, 3, 3, (1, 1), (1, 1)),
    (2, 3, 10, 11, 4, 3, 3, (2, 2), (1, 1)),
    (2, 4, 8, 8, 6, 1, 1, (2, 2), (0, 0)),
    (1, 2, 7, 9, 3, 3, 2, (2, 3), (0, 1)),
    (4, 3, 5, 5, 2, 5, 5, (1, 1), (2, 2)),
    (2, 2, 9, 9, 3, 3, 3, (3, 3), (1, 1)),
    (2, 3, 13, 13, 2, 7, 7, (2, 2), (3, 3)),
    (2, 3, 8, 8, 2, 3, 3, (2, 2), (0, 0)),
    (1, 5, 6, 5, 3, 4, 3, (3, 2), (2, 1)),
    (3, 2, 4, 4, 2, 2, 2, (4, 4), (0, 0)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in range(len(CONV_CASES))])
def test_conv2d_matches_the_reference(case, dtype, threads, rng):
    n, c, h, w, o, kh, kw, stride, padding = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((o, c, kh, kw)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    cache = {}
    y = fast_conv.conv2d_forward(x, weight, bias, stride, padding, cache=cache)
    expected = ref_conv.conv2d_forward(x, weight, bias, stride, padding)
    close(y, expected, dtype)
    close(fast_conv.conv2d_forward(x, weight, None, stride, padding),
          ref_conv.conv2d_forward(x, weight, None, stride, padding), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    close(fast_conv.conv2d_backward_input(dy, weight, x.shape, stride, padding),
          ref_conv.conv2d_backward_input(dy, weight, x.shape, stride, padding), dtype)
    dw_expected = ref_conv.conv2d_backward_weight(dy, x, weight.shape, stride, padding)
    assert "columns" in cache
    out = np.full(weight.shape, np.nan, dtype)
    dw = fast_conv.conv2d_backward_weight(dy, x, weight.shape, stride, padding, cache=cache,
                                          out=out)
    assert dw is out and "columns" not in cache
    close(dw, dw_expected, dtype)
    close(fast_conv.conv2d_backward_weight(dy, x, weight.shape, stride, padding),  # gathered again
          dw_expected, dtype)


@pytest.mark.parametrize("limit", [-1, 10**9], ids=["narrow", "wide"])
@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[7] == (1, 1)] +
                         [(2, 3, 6, 6, 4, 1, 1, (1, 1), (0, 0))],
                         ids=["3x3", "5x5", "1x1"])
def test_conv2d_stride_one_wide_and_narrow_columns(case, limit, monkeypatch, rng):
    """Both ways of gathering stride-1 columns (see conv2d.py's docstring), whichever the
    shapes would choose, in float64 to its rounding."""
    monkeypatch.setattr(fast_conv, "WIDE_LIMIT", limit)
    monkeypatch.setattr(fast_conv, "LAYOUT", "planes")
    n, c, h, w, o, kh, kw, stride, padding = case
    assert fast_conv._wide(stride, w, w + 2 * padding[1], o) == (limit > 0)
    test_conv2d_matches_the_reference(case, np.float64, 2, rng)
    x = rng.standard_normal((n, c, h, w))
    x[0, 0, 0, :] = np.inf                             # in a junk column's reach: y stays right
    weight = rng.standard_normal((o, c, kh, kw))
    with np.errstate(invalid="ignore"):
        y = fast_conv.conv2d_forward(x, weight, None, stride, padding)
        expected = ref_conv.conv2d_forward(x, weight, None, stride, padding)
    assert np.array_equal(np.isfinite(y), np.isfinite(expected))
    finite = np.isfinite(expected)
    close(y[finite], expected[finite], np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_channels_last_columns(dtype, monkeypatch, rng):
    """Columns gathered channels-last (runs of C floats; conv2d.py's docstring) for every case,
    whichever the shapes would choose: forward, both gradients, kept and gathered again."""
    monkeypatch.setattr(fast_conv, "LAYOUT", "last")
    for case in CONV_CASES + [(3, 20, 5, 5, 17, 3, 3, (1, 1), (1, 1))]:
        test_conv2d_matches_the_reference(case, dtype, 2, rng)


def test_conv2d_layout_rule_picks_channels_last_for_many_channels_on_small_images():
    """The measured choice (docs/BENCHMARKS.md): channels-last for digits' 32- and 64-channel
    8x8 and 4x4 layers and ResNet-18's from 16x16 and 128 channels down; bordered planes for
    the stems and ResNet-18's 64-channel 32x32 layers."""
    last = fast_conv._last
    assert last(32, 8) and last(64, 4) and last(128, 16) and last(256, 8) and last(512, 4)
    assert not last(1, 8) and not last(3, 32) and not last(64, 32) and not last(64, 16)


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (0, 1, 4)], ids=["3x3", "stride2", "5x5"])
def test_conv2d_one_image_per_chunk(case, monkeypatch, rng):
    """Large images take a chunk each, and their products write y and dx in place."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", 1)
    for layout in ("planes", "last"):
        monkeypatch.setattr(fast_conv, "LAYOUT", layout)
        test_conv2d_matches_the_reference(case, np.float64, 2, rng)


@pytest.mark.parametrize("layout", ["planes", "last"])
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_conv2d_and_gemm_round_their_operands_as_the_reference(precision, layout, monkeypatch,
                                                               rng):
    monkeypatch.setattr(fast_conv, "LAYOUT", layout)
    """At tf32 and bf16 the products take the reference's rounded operands (round_operand):
    the same sums of the same products, to float32 accumulation."""
    n, c, h, w, o, kh, kw, stride, padding = CONV_CASES[1]
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
    cache = {}
    y = fast_conv.conv2d_forward(x, weight, None, stride, padding, cache, precision)
    close(y, ref_conv.conv2d_forward(x, weight, None, stride, padding, precision), np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    close(fast_conv.conv2d_backward_input(dy, weight, x.shape, stride, padding, precision),
          ref_conv.conv2d_backward_input(dy, weight, x.shape, stride, padding, precision),
          np.float32)
    expected = ref_conv.conv2d_backward_weight(dy, x, weight.shape, stride, padding, precision)
    close(fast_conv.conv2d_backward_weight(dy, x, weight.shape, stride, padding, cache, None,
                                           precision), expected, np.float32)
    close(fast_conv.conv2d_backward_weight(dy, x, weight.shape, stride, padding, None, None,
                                           precision), expected, np.float32)
    assert not np.allclose(expected, ref_conv.conv2d_backward_weight(dy, x, weight.shape, stride,
                                                                     padding), rtol=1e-5)
    a, b = rng.standard_normal((40, 30)).astype(np.float32), \
        rng.standard_normal((20, 30)).astype(np.float32)
    close(fast_gemm.gemm(a, b, transpose_b=True, precision=precision),
          ref_gemm.gemm(a, b, transpose_b=True, precision=precision), np.float32)


def test_conv2d_column_cache_has_a_budget_and_reuses_its_buffers(monkeypatch, rng):
    """Columns past COLUMN_CACHE_BYTES are not kept (the backward gathers them again); a
    dropped cache's buffer serves the next forward of that shape."""
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nbytes = 27 * 2 * 8 * 10 * 4            # wide columns: rows as long as the bordered rows
    assert fast_conv._wide((1, 1), 8, 10, 4)
    store = fast_conv._store
    store.clear()
    before = store.in_use
    monkeypatch.setattr(fast_conv, "COLUMN_CACHE_BYTES", before + nbytes)
    first, second = {}, {}
    fast_conv.conv2d_forward(x, weight, None, (1, 1), (1, 1), cache=first)
    fast_conv.conv2d_forward(x, weight, None, (1, 1), (1, 1), cache=second)
    assert "columns" in first and "columns" not in second
    assert store.in_use == before + nbytes
    dy = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    expected = ref_conv.conv2d_backward_weight(dy, x, weight.shape, (1, 1), (1, 1))
    close(fast_conv.conv2d_backward_weight(dy, x, weight.shape, (1, 1), (1, 1), cache=second),
          expected, np.float32)
    buffer = first["columns"].cols
    del first
    assert store.in_use == before and store.free_bytes() == nbytes
    third = {}
    fast_conv.conv2d_forward(x, weight, None, (1, 1), (1, 1), cache=third)
    assert third["columns"].cols is buffer
    close(fast_conv.conv2d_backward_weight(dy, x, weight.shape, (1, 1), (1, 1), cache=third),
          expected, np.float32)
    assert store.in_use == before and store.free_bytes() == nbytes
    store.clear()


def test_conv2d_columns_of_another_input_are_not_used(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    cache = {}
    fast_conv.conv2d_forward(x, weight, None, (1, 1), (1, 1), cache=cache)
    other = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    close(fast_conv.conv2d_backward_weight(dy, other, weight.shape, (1, 1), (1, 1), cache=cache),
          ref_conv.conv2d_backward_weight(dy, other, weight.shape, (1, 1), (1, 1)), np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(5, 3, 7, 6), (32, 8, 4, 4), (6, 4), (3, 4, 5)])
@pytest.mark.parametrize("loc", [0.0, 100.0], ids=["centred", "large-mean"])
def test_batchnorm_matches_the_reference(shape, dtype, loc, threads, rng):
    x = (rng.standard_normal(shape) * 1.5 + loc).astype(dtype)
    channels, count = shape[1], x.size // shape[1]
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    sums = fast_bn.batchnorm_stats(x)
    expected = ref_bn.batchnorm_stats(x)
    assert sums.dtype == np.float64 and sums.shape == (channels, 2)
    close(sums, expected, dtype)
    # The variance both give, E[x^2] - E[x]^2 in float64, to the rounding of E[x^2].
    close(ref_bn._mean_var(sums, count)[1], ref_bn._mean_var(expected, count)[1], dtype,
          scale=np.abs(expected[:, 1]).max() / count)
    for fast, ref in ((fast_bn.batchnorm_normalize(x, expected, count, weight, bias, 1e-5),
                       ref_bn.batchnorm_normalize(x, expected, count, weight, bias, 1e-5)),
                      (fast_bn.batchnorm_normalize_running(x, expected[:, 0] / count,
                                                           np.full(channels, 2.0), weight, bias,
                                                           1e-5),
                       ref_bn.batchnorm_normalize_running(x, expected[:, 0] / count,
                                                          np.full(channels, 2.0), weight, bias,
                                                          1e-5))):
        for a, b in zip(fast, ref):
            close(a, b, dtype)
    _, mean, invstd = ref_bn.batchnorm_normalize(x, expected, count, weight, bias, 1e-5)
    dy = rng.standard_normal(shape).astype(dtype)
    reduced = fast_bn.batchnorm_backward_reduce(x, dy, mean, invstd)
    reduced_ref = ref_bn.batchnorm_backward_reduce(x, dy, mean, invstd)
    close(reduced, reduced_ref, dtype)
    for batch_statistics in (True, False):
        fast = fast_bn.batchnorm_backward_apply(x, dy, weight, mean, invstd, reduced_ref, count,
                                                batch_statistics)
        ref = ref_bn.batchnorm_backward_apply(x, dy, weight, mean, invstd, reduced_ref, count,
                                              batch_statistics)
        # dx's scale: weight * invstd * |dy| (its terms nearly cancel in a tiny batch)
        scale = np.abs(weight * invstd).max() * np.abs(dy).max()
        close(fast[0], ref[0], dtype, scale=scale)
        for a, b in zip(fast[1:], ref[1:]):
            close(a, b, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("residual", [False, True], ids=["relu", "residual-relu"])
def test_batchnorm_fused_epilogue_matches_the_reference(dtype, residual, threads, rng):
    """y = relu(bn(x) + residual) and the backward that masks dy by y > 0."""
    shape = (6, 5, 4, 3)
    x = rng.standard_normal(shape).astype(dtype)
    extra = rng.standard_normal(shape).astype(dtype) if residual else None
    weight = rng.uniform(0.5, 1.5, 5).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    sums, count = ref_bn.batchnorm_stats(x), x.size // 5
    y, mean, invstd = ref_bn.batchnorm_normalize(x, sums, count, weight, bias, 1e-5, extra, True)
    fast = fast_bn.batchnorm_normalize(x, sums, count, weight, bias, 1e-5, extra, True)
    for a, b in zip(fast, (y, mean, invstd)):
        close(a, b, dtype)
    running = fast_bn.batchnorm_normalize_running(x, mean, invstd, weight, bias, 1e-5, extra,
                                                  True)
    close(running[0], ref_bn.batchnorm_normalize_running(x, mean, invstd, weight, bias, 1e-5,
                                                         extra, True)[0], dtype)
    assert (y == 0).any()
    dy = rng.standard_normal(shape).astype(dtype)
    reduced = ref_bn.batchnorm_backward_reduce(x, dy, mean, invstd, y)
    close(fast_bn.batchnorm_backward_reduce(x, dy, mean, invstd, y), reduced, dtype)
    for batch_statistics in (True, False):
        a = fast_bn.batchnorm_backward_apply(x, dy, weight, mean, invstd, reduced, count,
                                             batch_statistics, None, y)
        b = ref_bn.batchnorm_backward_apply(x, dy, weight, mean, invstd, reduced, count,
                                            batch_statistics, None, y)
        close(a[0], b[0], dtype, scale=np.abs(weight * invstd).max() * np.abs(dy).max())


@pytest.mark.parametrize("shape", [(32, 16, 8, 8), (5, 3, 7), (4, 6), (2, 3, 2, 2, 2)])
def test_channel_sum_matches_the_reference(shape, threads, rng):
    from cupycnn.cpu import reduce as fast_reduce
    from cupycnn.reference import reduce as ref_reduce
    x = (rng.standard_normal(shape) + 3).astype(np.float32)      # a mean: cancellation shows
    close(fast_reduce.channel_sum(x), ref_reduce.channel_sum(x.astype(np.float64)).astype(
        np.float32), np.float32)
    assert fast_reduce.channel_sum(x).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_matches_the_reference(dtype, threads, rng):
    m, k, n = 600, 70, 33                          # more rows than one piece
    for ta, tb in ((False, False), (True, False), (False, True)):
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
        for kwargs in ({}, {"alpha": 0.5, "bias": rng.standard_normal(n).astype(dtype)},
                       {"bias": rng.standard_normal(m).astype(dtype), "bias_per": "row"}):
            close(fast_gemm.gemm(a, b, ta, tb, **kwargs), ref_gemm.gemm(a, b, ta, tb, **kwargs),
                  dtype)
        c = rng.standard_normal((m, n)).astype(dtype)
        expected = ref_gemm.gemm(a, b, ta, tb, beta=2.0, out=c.copy())
        out = c.copy()
        assert fast_gemm.gemm(a, b, ta, tb, beta=2.0, out=out) is out
        close(out, expected, dtype)
    batched = rng.standard_normal((3, 4, 5)).astype(dtype)
    close(fast_gemm.gemm(batched, batched, transpose_b=True),
          ref_gemm.gemm(batched, batched, transpose_b=True), dtype)


def test_relu_and_add_are_the_reference_bit_for_bit(threads, rng):
    for size in (7, 100_002):
        x = rng.standard_normal(size).astype(np.float32)
        dy = rng.standard_normal(size).astype(np.float32)
        x[:4] = [0.0, -0.0, np.nan, -1.0]
        dy[:4] = [np.inf, np.nan, 1.0, np.nan]        # where x <= 0: exactly 0, not NaN
        x = x.reshape(-1, 1) if size == 7 else x.reshape(6, -1, 1)
        dy = dy.reshape(x.shape)
        assert np.array_equal(bits(fast_elementwise.relu_forward(x)),
                              bits(ref_elementwise.relu_forward(x)))
        assert np.array_equal(bits(fast_elementwise.relu_backward(x, dy)),
                              bits(ref_elementwise.relu_backward(x, dy)))
        assert np.array_equal(bits(fast_elementwise.add(x, dy)), bits(ref_elementwise.add(x, dy)))
        out = x.copy()
        assert fast_elementwise.add(out, dy, out=out) is out
        assert np.array_equal(bits(out), bits(x + dy))


@pytest.mark.parametrize("shape, kernel", [((3, 4, 8, 8), (2, 2)), ((2, 3, 7, 9), (2, 3)),
                                           ((5, 2, 6, 6), (3, 3)), ((2, 2, 5, 4), (2, 2)),
                                           ((1, 1, 3, 3), (1, 1))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_is_the_reference_bit_for_bit(shape, kernel, dtype, threads, rng):
    """Ties (small integers) go to the first maximum, NaN wins, -inf loses, odd edges are cut."""
    x = rng.integers(-3, 3, shape).astype(dtype)
    y, argmax = fast_pool.max_pool2d_forward(x, kernel, kernel, (0, 0))    # without NaN
    y_ref, argmax_ref = ref_pool.max_pool2d_forward(x, kernel, kernel, (0, 0))
    assert np.array_equal(y, y_ref) and np.array_equal(argmax, argmax_ref)
    x.flat[::17] = np.nan
    x.flat[5::23] = -np.inf
    y, argmax = fast_pool.max_pool2d_forward(x, kernel, kernel, (0, 0))
    y_ref, argmax_ref = ref_pool.max_pool2d_forward(x, kernel, kernel, (0, 0))
    assert np.array_equal(y, y_ref, equal_nan=True) and np.array_equal(argmax, argmax_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy.flat[::5] = -0.0                     # lands as +0, as the reference's add.at into zeros
    assert np.array_equal(bits(fast_pool.max_pool2d_backward(dy, argmax, shape[2:], kernel,
                                                             kernel, (0, 0))),
                          bits(ref_pool.max_pool2d_backward(dy, argmax, shape[2:])))


def test_max_pool_other_geometries_and_foreign_argmax_take_the_reference(rng):
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    for kernel, stride, padding in (((3, 3), (2, 2), (1, 1)), ((2, 2), (1, 1), (0, 0))):
        for a, b in zip(fast_pool.max_pool2d_forward(x, kernel, stride, padding),
                        ref_pool.max_pool2d_forward(x, kernel, stride, padding)):
            assert np.array_equal(a, b)
    dy = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    argmax = np.zeros((2, 3, 3, 3), np.int32)          # every window points at element 0
    assert np.array_equal(fast_pool.max_pool2d_backward(dy, argmax, (7, 7), (2, 2), (2, 2),
                                                        (0, 0)),
                          ref_pool.max_pool2d_backward(dy, argmax, (7, 7)))


def test_philox_and_dropout_are_the_reference_bit_for_bit(threads, rng):
    for seed, stream in ((0, 0), (2**63 + 12345, 2**48 + 7), (int(rng.integers(2**62)), 5)):
        for count in (1, 5, fast_philox.PIECE + 3):
            blocks = np.arange(count, dtype=np.uint64)
            assert np.array_equal(fast_philox.block_words(seed, stream, count),
                                  ref_philox.block_words(seed, stream, blocks))
        for count in (1, 2, 3, 4, 5, 4 * fast_philox.PIECE + 7):      # the last block cut
            for p in (0.0, 0.1, 0.5, 1.0):
                assert np.array_equal(fast_philox.keep_mask((count,), p, seed, stream),
                                      ref_dropout.keep_mask((count,), p, seed, stream))
    # The counter's high word changes inside the run (pieces split there), and the top block.
    for start, count in ((2**32 - 50, 100), (2**62 - 100, 100)):
        assert np.array_equal(fast_philox.block_words(2**64 - 1, 9, count, start=start),
                              ref_philox.block_words(2**64 - 1, 9, np.arange(
                                  start, start + count, dtype=np.uint64)))
    small, large = (7, 33), (3, parallel.PIECE_MIN + 5)     # np.where; the pieces' bit AND
    for shape, p, dtype in [(small, 0.0, np.float32), (small, 0.3, np.float32),
                            (small, 1.0, np.float32), (small, 0.3, np.float64),
                            (large, 0.3, np.float32), (large, 0.5, np.float64)]:
        x = rng.standard_normal(shape).astype(dtype)
        x[0, :3] = [np.nan, np.inf, -np.inf]
        cache = {}
        with np.errstate(invalid="ignore"):
            y = fast_dropout.dropout_forward(x, p, 11, 3, cache)
            assert np.array_equal(bits(y), bits(ref_dropout.dropout_forward(x, p, 11, 3)))
            assert "mask" in cache
            dx = fast_dropout.dropout_backward(x, p, 11, 3, cache)
            assert "mask" not in cache
            assert np.array_equal(bits(dx), bits(ref_dropout.dropout_backward(x, p, 11, 3)))
            assert np.array_equal(bits(fast_dropout.dropout_backward(x, p, 11, 3)), bits(dx))


def test_dropout_backward_reuses_the_forward_mask(monkeypatch, rng):
    """The layer's backward draws no Philox numbers on the numpy path: it has the mask."""
    cupycnn.use("numpy")
    layer = layers.Dropout(0.4)
    x = rng.standard_normal((4, 50)).astype(np.float32)
    y = layer.forward(x)
    draws = []
    monkeypatch.setattr(fast_philox, "keep_mask", lambda *a: draws.append(a))
    dx = layer.backward(np.ones_like(x))
    assert not draws
    assert np.array_equal(dx != 0, y != 0)


def _flat_problem(rng, n=300_000):
    segments = np.array([[0, 1000, 0, 0], [1000, 70_000, 0, 0], [71_000, 5, 1, 0],
                         [71_040, 200_000, 0, 0], [271_040, 28_000, 1, 0]])
    buffers = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
    buffers[3] = np.abs(buffers[3])
    buffers[0][1000 + 70_000 + 5:71_040] = np.nan      # padding: never touched
    return segments, buffers


@pytest.mark.parametrize("grad_scale", [1.0, 0.5])
def test_optimizers_are_the_reference_bit_for_bit(grad_scale, threads, rng):
    segments, base = _flat_problem(rng)
    for mode, nesterov in ((ref_optim.MOMENTUM_FIRST, 1), (ref_optim.MOMENTUM_RUNNING, 0),
                           (ref_optim.MOMENTUM_NONE, 0)):
        table = np.array([[0.1, 0.9, 0.9, 5e-4, 1e-4, nesterov, mode],
                          [0.2, 0.8, 1.0, 0.0, 0.0, 0, ref_optim.MOMENTUM_RUNNING]])
        a, b = [x.copy() for x in base], [x.copy() for x in base]
        ref_optim.sgd_step(a[0], a[1], a[2], segments, table, grad_scale)
        fast_optim.sgd_step(b[0], b[1], b[2], segments, table, grad_scale)
        for x, y in zip(a, b):
            assert np.array_equal(bits(x), bits(y))
    table = np.array([[1e-3, 0.9, 0.1, 0.999, 0.001, 0, 0, 1e-8, 0.01, 0.99, 1e-5],
                      [2e-3, 0.8, 0.2, 0.99, 0.01, 0, 0, 1e-8, 0.0, 1.0, 0.0]])
    a, b = [x.copy() for x in base], [x.copy() for x in base]
    ref_optim.adam_step(*a, segments, table, grad_scale, 3)
    fast_optim.adam_step(*b, segments, table, grad_scale, 3)
    for x, y in zip(a, b):
        assert np.array_equal(bits(x), bits(y))


# ------------------------------------------------------------------------------ the dispatch

def test_float32_takes_the_cpu_path_float64_and_disabled_the_reference(monkeypatch, rng):
    cupycnn.use("numpy")
    calls = []
    original = fast_conv.conv2d_forward
    monkeypatch.setattr(fast_conv, "conv2d_forward",
                        lambda *a, **k: calls.append(a[0].dtype) or original(*a, **k))
    weight = rng.standard_normal((2, 3, 3, 3))
    for dtype in (np.float32, np.float64):
        ops.conv2d.conv2d_forward(rng.standard_normal((1, 3, 5, 5)).astype(dtype),
                                  weight.astype(dtype))
    assert calls == [np.float32]
    cpu.set_enabled(False)
    try:
        ops.conv2d.conv2d_forward(rng.standard_normal((1, 3, 5, 5)).astype(np.float32),
                                  weight.astype(np.float32))
    finally:
        cpu.set_enabled(True)
    assert calls == [np.float32]


def test_parallel_for_keeps_small_work_on_one_thread():
    """Below MIN_TASK_BYTES per thread a thread is not woken (it costs more than it saves)."""
    cpu.set_num_threads(2)
    try:
        for nbytes in (parallel.MIN_TASK_BYTES, 2 * parallel.MIN_TASK_BYTES - 1):
            alone = threading.Barrier(2, timeout=1)    # breaks: no second thread comes
            seen = set()

            def task(i):
                if i == 0:
                    with pytest.raises(threading.BrokenBarrierError):
                        alone.wait()
                seen.add(threading.current_thread().name)
            parallel.parallel_for(4, task, nbytes=nbytes)
            assert seen == {threading.current_thread().name}, (nbytes, seen)
        for nbytes in (None, 2 * parallel.MIN_TASK_BYTES):
            both = threading.Barrier(2, timeout=30)   # passes only with two threads at once
            seen = set()

            def task(i):
                if i < 2:
                    both.wait()
                seen.add(threading.current_thread().name)
            parallel.parallel_for(4, task, nbytes=nbytes)
            assert len(seen) == 2, (nbytes, seen)
    finally:
        cpu.set_num_threads(None)


def test_run_together_returns_each_result_in_order_and_raises(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_TASK_BYTES", 1)
    cpu.set_num_threads(2)
    try:
        both = threading.Barrier(2, timeout=30)       # passes only with one thread each

        def name():
            both.wait()
            return threading.current_thread().name
        assert len(set(parallel.run_together([name, name], nbytes=2))) == 2
        assert parallel.run_together([lambda: 1, lambda: 2]) == [1, 2]

        def failing():
            raise KeyError("second")
        with pytest.raises(KeyError, match="second"):
            parallel.run_together([lambda: 1, failing])
    finally:
        cpu.set_num_threads(None)


def test_parallel_for_runs_every_task_and_raises_the_first_error(threads):
    done = []
    parallel.parallel_for(10, done.append)
    assert sorted(done) == list(range(10))

    def failing(i):
        if i == 3:
            raise KeyError("task 3")
    with pytest.raises(KeyError, match="task 3"):
        parallel.parallel_for(6, failing)
    nested = []
    parallel.parallel_for(2, lambda i: parallel.parallel_for(3, lambda j: nested.append((i, j))))
    assert sorted(nested) == [(i, j) for i in range(2) for j in range(3)]
    with pytest.raises(ValueError, match="at least 1"):
        cpu.set_num_threads(0)


def test_thread_count_comes_from_the_call_the_environment_or_blas(monkeypatch):
    from threadpoolctl import threadpool_limits
    monkeypatch.delenv("CUPYCNN_CPU_THREADS", raising=False)
    cpu.set_num_threads(None)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            assert cpu.num_threads() == 1
            seen = set()
            parallel.parallel_for(4, lambda i: seen.add(threading.current_thread().name))
            assert len(seen) == 1                  # BLAS's one thread: no worker joined in
        monkeypatch.setenv("CUPYCNN_CPU_THREADS", "3")
        cpu.set_num_threads(None)                  # the variable is read again
        with threadpool_limits(limits=1, user_api="blas"):
            assert cpu.num_threads() == 3
        cpu.set_num_threads(2)
        assert cpu.num_threads() == 2
        monkeypatch.setenv("CUPYCNN_CPU_THREADS", "none")
        cpu.set_num_threads(None)
        with pytest.raises(ValueError, match="CUPYCNN_CPU_THREADS='none'"):
            cpu.num_threads()
    finally:
        monkeypatch.delenv("CUPYCNN_CPU_THREADS", raising=False)
        cpu.set_num_threads(None)


def _train_steps(model_fn, optimizer_fn, shape, steps, seed=0):
    cupycnn.use("numpy")
    cupycnn.manual_seed(seed)
    model = model_fn()
    optimizer = optimizer_fn(model.parameters())
    loss = SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((8,) + shape).astype(np.float32)
        y = rng.integers(0, 10, 8).astype(np.int32)
        losses.append(float(loss.forward(model.forward(x, training=True), y)))
        with layers.without_input_grad(model):
            assert model.backward(loss.backward()) is None
        optimizer.step()
    return losses, model.state_dict()


def _small_resnet():
    """ResNet-18's parts (3x3 stem, basic blocks with strided and projection shortcuts, global
    pooling, a dense head), narrow."""
    from cupycnn.models.resnet import BasicBlock
    return layers.Sequential(layers.Conv2D(3, 8, 3, padding=1, bias=False), layers.BatchNorm2D(8),
                             layers.ReLU(), BasicBlock(8, 8), BasicBlock(8, 16, 2),
                             BasicBlock(16, 32, 2), layers.GlobalAvgPool2D(),
                             layers.Dense(32, 10))


def _digits_cnn():
    return models.simple_cnn(num_classes=10, in_channels=1, input_size=8, widths=(8, 16),
                             convs_per_block=2, block_dropout=(0.1, 0.2), hidden=16,
                             head_dropout=0.3)


@pytest.mark.parametrize("model_fn, optimizer_fn, shape", [
    # (SGD: Adam would turn the rounding noise of a zero gradient, that of a bias before a
    # batchnorm, into steps of lr either way)
    (_digits_cnn, lambda p: optim.SGD(p, lr=0.05, momentum=0.9), (1, 8, 8)),
    (_small_resnet, lambda p: optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4),
     (3, 16, 16)),
], ids=["digits-cnn", "resnet"])
def test_training_steps_follow_the_reference_and_ignore_the_thread_count(model_fn, optimizer_fn,
                                                                        shape, monkeypatch):
    """Three training steps: the CPU path's losses and parameters follow the references' to
    float32 rounding, and are the same bits with 1 and 2 threads (every op split, however small
    its arrays)."""
    monkeypatch.setattr(parallel, "MIN_TASK_BYTES", 1)
    results = {}
    for threads in (1, 2):
        cpu.set_num_threads(threads)
        try:
            results[threads] = _train_steps(model_fn, optimizer_fn, shape, 3)
        finally:
            cpu.set_num_threads(None)
    cpu.set_enabled(False)
    try:
        reference = _train_steps(model_fn, optimizer_fn, shape, 3)
    finally:
        cpu.set_enabled(True)
    assert results[1][0] == results[2][0]
    for key, value in results[1][1].items():
        assert np.array_equal(value, results[2][1][key]), key
    np.testing.assert_allclose(results[1][0], reference[0], rtol=1e-4)
    for key, value in results[1][1].items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, reference[1][key], rtol=1e-3, atol=1e-4,
                                       err_msg=key)


def test_without_input_grad_skips_the_stem_and_restores_it(rng):
    cupycnn.use("numpy")
    model = _digits_cnn()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    loss = SoftmaxCrossEntropy()
    first = model.input_layers()
    assert [type(layer).__name__ for layer in first] == ["Conv2D"]
    loss.forward(model.forward(x), np.arange(4, dtype=np.int32))
    with layers.without_input_grad(model):
        assert not first[0].input_grad
        assert model.backward(loss.backward()) is None
    assert first[0].input_grad
    loss.forward(model.forward(x), np.arange(4, dtype=np.int32))
    assert model.backward(loss.backward()).shape == x.shape
    # Both branches of a projection shortcut see the input; an identity shortcut passes dy.
    block = layers.Residual(layers.Conv2D(2, 3, 1), layers.Conv2D(2, 3, 1))
    assert len(block.input_layers()) == 2
    assert layers.Residual(layers.ReLU()).input_layers() == []
    block.forward(rng.standard_normal((2, 2, 4, 4)).astype(np.float32))
    with layers.without_input_grad(block):
        assert block.backward(np.ones((2, 3, 4, 4), np.float32)) is None
