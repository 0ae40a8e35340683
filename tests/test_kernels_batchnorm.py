"""kernels/batchnorm.cu against reference/batchnorm.py, stage by stage, on every kernel device:
the statistics (split over several blocks per channel or not), the normalisation from the sums
and from the running statistics, the running-statistics update, and both backward stages.
Also the common.cuh helpers the normalisation kernels added (double block sums, RowColCursor)."""
import numpy as np
import pytest

import cupycnn
from cupycnn import reference, runtime, sim
from cupycnn.ops import batchnorm as bn
from helpers import assert_all_match, assert_matches, randn

ref = reference.batchnorm

# [N, C, *]: batch 1 with H*W > 1, odd sizes, channel counts 1, 3, 17, 70, BatchNorm1D's [N, C]
# and [N, C, L], and a channel of more than BN_ELEMENTS_PER_BLOCK (4096) elements.
SHAPES = [(1, 3, 5, 7), (2, 17, 3, 5), (4, 1, 6, 6), (3, 70, 1, 3), (5, 70), (7, 3),
          (3, 17, 9), (2, 3, 48, 49)]


def f64(*arrays):
    return tuple(a.astype(np.float64) for a in arrays)


def _inputs(rng, shape, offset=0.0):
    channels = shape[1]
    x = randn(rng, *shape) * 2 + np.float32(offset)
    weight = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    bias = randn(rng, channels)
    return x, weight, bias


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_stats(kernel_device, rng, shape, splits):
    x = randn(rng, *shape)
    sums = bn.batchnorm_stats(cupycnn.asarray(x), splits=splits)
    assert sums.dtype == np.float64 and sums.shape == (shape[1], 2)
    assert_matches(sums, ref.batchnorm_stats(x.astype(np.float64)))


def test_stats_split_choice_fills_the_gpu():
    # 64 channels of 32 x 56 x 56: 9 blocks per channel (528 / 64 rounded up), each with
    # 11150 elements; few elements per channel: one block per channel.
    assert bn.choose_splits(64, 32 * 56 * 56) == 9
    assert bn.choose_splits(64, 8 * 7 * 7) == 1
    assert bn.choose_splits(1024, 10**6) == 1


# Mean 20, std 2: a float E[x^2] - E[x]^2 would lose the variance's low digits; the double sums
# keep it. Only for channels of 16 or more elements: the mean is kept in float32 (as PyTorch
# keeps it), and its rounding (1e-6 at 20) is not small against the spread of a few samples.
NORMALIZE_CASES = [(shape, 0.0) for shape in SHAPES] + \
    [(shape, 20.0) for shape in SHAPES if int(np.prod(shape)) // shape[1] >= 16]


@pytest.mark.parametrize("shape, offset", NORMALIZE_CASES, ids=str)
def test_normalize(kernel_device, rng, shape, offset):
    """Training forward from the sums."""
    x, weight, bias = _inputs(rng, shape, offset)
    count = x.size // shape[1]
    sums = bn.batchnorm_stats(cupycnn.asarray(x))
    y, mean, invstd = bn.batchnorm_normalize(cupycnn.asarray(x), sums, count,
                                             cupycnn.asarray(weight), cupycnn.asarray(bias), 1e-5)
    ry, rmean, rinvstd = ref.batchnorm_normalize(*f64(x), ref.batchnorm_stats(f64(x)[0]), count,
                                                 *f64(weight, bias), 1e-5)
    assert_matches(mean, rmean, "mean")
    assert_matches(invstd, rinvstd, "invstd")
    assert_matches(y, ry, "y")


@pytest.mark.parametrize("shape", SHAPES[:4] + SHAPES[5:7], ids=str)
def test_normalize_running(kernel_device, rng, shape):
    x, weight, bias = _inputs(rng, shape)
    running_mean = randn(rng, shape[1])
    running_var = rng.uniform(0.2, 3.0, shape[1]).astype(np.float32)
    y, mean, invstd = bn.batchnorm_normalize_running(
        *(cupycnn.asarray(a) for a in (x, running_mean, running_var, weight, bias)), 1e-5)
    ry, rmean, rinvstd = ref.batchnorm_normalize_running(
        *f64(x, running_mean, running_var, weight, bias), 1e-5)
    assert_matches(mean, rmean, "mean")
    assert_matches(invstd, rinvstd, "invstd")
    assert_matches(y, ry, "y")


def _pytorch_running_update(x, running_mean, running_var, num_batches_tracked, momentum):
    """torch.nn.modules.batchnorm._BatchNorm.forward and F.batch_norm, transcribed: count the
    batch, pick the factor, blend in the batch mean and the UNBIASED batch variance."""
    num_batches_tracked += 1
    factor = 1.0 / num_batches_tracked if momentum is None else momentum
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    var = x.var(axis=axes) * n / (n - 1)
    return ((1 - factor) * running_mean + factor * mean,
            (1 - factor) * running_var + factor * var, num_batches_tracked)


@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
@pytest.mark.parametrize("shape", [(4, 17, 3, 5), (3, 70), (2, 3, 5)], ids=str)
def test_update_running_stats_over_several_steps(kernel_device, rng, shape, momentum):
    channels = shape[1]
    running_mean = cupycnn.asarray(np.zeros(channels, np.float32))
    running_var = cupycnn.asarray(np.ones(channels, np.float32))
    counter = cupycnn.asarray(np.zeros(1, np.int64)).reshape(())
    expected = (np.zeros(channels), np.ones(channels), 0)
    for step in range(4):
        x = randn(rng, *shape) * (step + 1) + np.float32(step - 1)
        sums = bn.batchnorm_stats(cupycnn.asarray(x))
        bn.batchnorm_update_running_stats(sums, x.size // channels, running_mean, running_var,
                                          counter, momentum)
        expected = _pytorch_running_update(x.astype(np.float64), *expected, momentum)
        assert_matches(running_mean, expected[0], f"running_mean, step {step}")
        assert_matches(running_var, expected[1], f"running_var, step {step}")
        assert int(cupycnn.asnumpy(counter)) == expected[2] == step + 1


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("splits", [None, 4])
def test_backward_reduce(kernel_device, rng, shape, splits):
    x = randn(rng, *shape)
    dy = randn(rng, *shape)
    mean = randn(rng, shape[1])
    invstd = rng.uniform(0.5, 2.0, shape[1]).astype(np.float32)
    sums = bn.batchnorm_backward_reduce(*(cupycnn.asarray(a) for a in (x, dy, mean, invstd)),
                                        splits=splits)
    assert sums.dtype == np.float64 and sums.shape == (shape[1], 2)
    assert_matches(sums, ref.batchnorm_backward_reduce(*f64(x, dy, mean, invstd)))


@pytest.mark.parametrize("batch_statistics", [True, False], ids=["batch-stats", "frozen"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_apply(kernel_device, rng, shape, batch_statistics):
    """dx from `sums` (as if all-reduced: a count larger than this batch), dweight and dbias from
    the distinct local `param_sums`."""
    channels = shape[1]
    x, weight, _ = _inputs(rng, shape)
    dy = randn(rng, *shape)
    mean = randn(rng, channels)
    invstd = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    count = 3 * (x.size // channels)
    sums = rng.standard_normal((channels, 2)) * count ** 0.5
    param_sums = rng.standard_normal((channels, 2))
    dweight = cupycnn.asarray(np.full(channels, np.nan, np.float32))
    dx, dw, db = bn.batchnorm_backward_apply(
        *(cupycnn.asarray(a) for a in (x, dy, weight, mean, invstd, sums)), count,
        batch_statistics=batch_statistics, param_sums=cupycnn.asarray(param_sums),
        dweight=dweight)
    assert dw is dweight
    assert_all_match((dx, dw, db), ref.batchnorm_backward_apply(
        *f64(x, dy, weight, mean, invstd), sums, count, batch_statistics, param_sums),
        ("dx", "dweight", "dbias"))


def test_bad_arguments_name_the_op(rng):
    cupycnn.use("sim")
    x = cupycnn.asarray(randn(rng, 2, 3, 4))
    with pytest.raises(ValueError, match=r"batchnorm_normalize: sums must have shape \(C=3, 2\), "
                                         r"got \(4, 2\)"):
        bn.batchnorm_normalize(x, np.zeros((4, 2)), 8, np.ones(3, np.float32),
                               np.zeros(3, np.float32), 1e-5)
    with pytest.raises(ValueError, match="batchnorm_normalize: sums must be float64 on the sim "
                                         "device, got float32"):
        bn.batchnorm_normalize(x, np.zeros((3, 2), np.float32), 8, np.ones(3, np.float32),
                               np.zeros(3, np.float32), 1e-5)
    with pytest.raises(ValueError, match=r"batchnorm_stats: x must have shape \(N, C, ...\), "
                                         r"got \(5,\)"):
        bn.batchnorm_stats(cupycnn.asarray(randn(rng, 5)))
    with pytest.raises(ValueError, match=r"batchnorm_update_running_stats: count .* at least 2"):
        bn.batchnorm_update_running_stats(np.zeros((3, 2)), 1, np.zeros(3, np.float32),
                                          np.ones(3, np.float32), np.zeros((), np.int64), 0.1)
    with pytest.raises(ValueError, match="num_batches_tracked must be int64"):
        bn.batchnorm_update_running_stats(np.zeros((3, 2)), 4, np.zeros(3, np.float32),
                                          np.ones(3, np.float32), np.zeros((), np.int32), 0.1)
    with pytest.raises(ValueError, match=r"batchnorm_backward_reduce: dy must have shape "
                                         r"\(2, 3, 4\), got \(2, 3, 5\)"):
        bn.batchnorm_backward_reduce(x, cupycnn.asarray(randn(rng, 2, 3, 5)),
                                     np.zeros(3, np.float32), np.ones(3, np.float32))


# ------------------------------------------------------------ the helpers added to common.cuh

_PROBE = r'''
#include "common.cuh"
// Every thread of block b writes the pair of block sums of (v, v * v) over its block's slice.
extern "C" __global__ void pair_sums(const double* v, double* out, int n) {
  __shared__ double scratch[2 * WARP_SIZE];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  double a = i < n ? v[i] : 0.0, b = i < n ? v[i] * v[i] : 0.0;
  block_sum_pair_double(a, b, scratch);
  block_sum_pair_double(a, b, scratch);          // twice: the scratch is reused safely
  out[2 * i] = a;
  out[2 * i + 1] = b;
}
// Thread t walks e = start + t, + stride, ... < count, recording (row, col) of each step.
extern "C" __global__ void cursor_walk(int* rows, int* cols, int start, int count, int width) {
  RowColCursor at(start + threadIdx.x, blockDim.x, width);
  for (int e = start + threadIdx.x; e < count; e += blockDim.x, at.advance()) {
    rows[e] = at.row;
    cols[e] = at.col;
  }
}
'''


@pytest.mark.parametrize("order", ["natural", "reversed", "random"])
@pytest.mark.parametrize("block", [32, 96, 1024])
def test_common_block_sum_pair_double(rng, order, block):
    cupycnn.use("sim")
    sim.set_thread_order(order, seed=3)
    module = runtime.load_module(code=_PROBE)
    blocks = 3
    n = blocks * block - 7
    v = rng.standard_normal(n) + 1e8       # double precision needed to keep the small parts
    out = np.full(2 * blocks * block, np.nan)
    module.get_function("pair_sums")((blocks,), (block,), (v, out, np.int32(n)))
    padded = np.concatenate([v, np.zeros(7)]).reshape(blocks, block)
    expected = np.stack([padded.sum(1), (padded * padded).sum(1)], axis=1)
    # sum of the pair, then each thread's copy summed again: block size times the sums
    got = out.reshape(blocks, block, 2)
    np.testing.assert_allclose(got, np.broadcast_to(expected[:, None, :] * block, got.shape),
                               rtol=1e-13)


@pytest.mark.parametrize("order", ["natural", "reversed", "random"])
@pytest.mark.parametrize("width, start, count, block", [(1, 0, 300, 64), (3, 2, 200, 32),
                                                        (37, 5, 1000, 96), (300, 17, 1200, 64),
                                                        (64, 0, 512, 64)])
def test_common_row_col_cursor(order, width, start, count, block):
    cupycnn.use("sim")
    sim.set_thread_order(order, seed=4)
    module = runtime.load_module(code=_PROBE)
    rows, cols = np.full(count, -1, np.int32), np.full(count, -1, np.int32)
    module.get_function("cursor_walk")((1,), (block,), (rows, cols, np.int32(start),
                                                        np.int32(count), np.int32(width)))
    e = np.arange(start, count)
    np.testing.assert_array_equal(rows[start:], e // width)
    np.testing.assert_array_equal(cols[start:], e % width)
