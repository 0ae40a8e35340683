"""kernels/groupnorm.cu (with batchnorm_stats for the group statistics) against
reference/groupnorm.py, forward and backward, on every kernel device."""
import numpy as np
import pytest

import cupycnn
from cupycnn import reference
from cupycnn.ops import groupnorm as gn
from helpers import assert_all_match, assert_matches, randn

ref = reference.groupnorm

# (shape [N, C, *], groups): batch 1 with H*W > 1, one channel per group, one group, 17 and 70
# channels, [N, C] (inner 1: a warp per one-element row in the backward reduction), 1-D
# trailing axes, rows not a multiple of the 8 rows per block, and groups of more than the 4096
# elements a block handles.
CASES = [((1, 6, 5, 3), 2), ((2, 3, 7), 3), ((3, 17, 2, 3), 1), ((2, 17, 3), 17),
         ((2, 70, 3, 3), 7), ((4, 8), 4), ((1, 1, 4, 4), 1), ((2, 4, 40, 61), 2)]


def _inputs(rng, shape, offset=0.0):
    x = randn(rng, *shape) * 2 + np.float32(offset)
    weight = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
    bias = randn(rng, shape[1])
    return x, weight, bias


def f64(*arrays):
    return tuple(a.astype(np.float64) for a in arrays)


def _group_size(shape, groups):
    return int(np.prod(shape[1:])) // groups


# Mean 20, std 2: float sums would lose the variance (E[x^2] - E[x]^2 cancels); the double sums
# keep it. Only for groups of 16 or more elements: the mean is kept in float32 (as PyTorch
# keeps it), and its rounding (1e-6 at 20) is not small against the spread of 2 or 3 samples.
FORWARD_CASES = [(shape, groups, 0.0) for shape, groups in CASES] + \
    [(shape, groups, 20.0) for shape, groups in CASES if _group_size(shape, groups) >= 16]


@pytest.mark.parametrize("shape, groups, offset", FORWARD_CASES, ids=str)
def test_groupnorm_forward(kernel_device, rng, shape, groups, offset):
    x, weight, bias = _inputs(rng, shape, offset)
    y, mean, invstd = gn.groupnorm_forward(*(cupycnn.asarray(a) for a in (x, weight, bias)), groups,
                                         1e-5)
    ry, rmean, rinvstd = ref.groupnorm_forward(*f64(x, weight, bias), groups, 1e-5)
    assert mean.shape == invstd.shape == (shape[0], groups)
    assert_matches(mean, rmean, "mean")
    assert_matches(invstd, rinvstd, "invstd")
    assert_matches(y, ry, "y")


@pytest.mark.parametrize("shape, groups", CASES, ids=str)
def test_groupnorm_backward(kernel_device, rng, shape, groups):
    x, weight, _ = _inputs(rng, shape)
    dy = randn(rng, *shape)
    mean = randn(rng, shape[0], groups)
    invstd = rng.uniform(0.3, 1.0, (shape[0], groups)).astype(np.float32)
    dbias = cupycnn.asarray(np.full(shape[1], np.nan, np.float32))
    dx, dweight, db = gn.groupnorm_backward(
        *(cupycnn.asarray(a) for a in (x, dy, weight, mean, invstd)), groups, dbias=dbias)
    assert db is dbias
    assert_all_match((dx, dweight, db),
                     ref.groupnorm_backward(*f64(x, dy, weight, mean, invstd), groups),
                     ("dx", "dweight", "dbias"))


def test_bad_arguments_name_the_op(rng):
    cupycnn.use("sim")
    x = cupycnn.asarray(randn(rng, 2, 6, 3))
    w = cupycnn.asarray(np.ones(6, np.float32))
    with pytest.raises(ValueError, match=r"groupnorm_forward: num_groups=4 must divide the 6 "
                                         r"channels of x \(2, 6, 3\)"):
        gn.groupnorm_forward(x, w, w, 4, 1e-5)
    with pytest.raises(ValueError, match=r"groupnorm_forward: bias must have shape \(C=6,\), "
                                         r"got \(5,\)"):
        gn.groupnorm_forward(x, w, cupycnn.asarray(np.ones(5, np.float32)), 3, 1e-5)
    with pytest.raises(ValueError, match=r"groupnorm_backward: mean must have shape \(2, 3\), "
                                         r"got \(2, 2\)"):
        gn.groupnorm_backward(x, x, w, np.zeros((2, 2), np.float32),
                              np.ones((2, 3), np.float32), 3)
