"""kernels/elementwise.cu and reduce.cu against their float64 references, on every kernel device."""
import numpy as np
import pytest

import cupycnn
from cupycnn import reference
from cupycnn.ops import elementwise, reduce
from helpers import assert_matches, randn

SHAPES = [(1,), (7,), (1000,), (3, 5, 7), (2, 3, 17, 19), (257, 1031)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_forward(kernel_device, rng, shape):
    x = randn(rng, *shape)
    y = elementwise.relu_forward(cupycnn.asarray(x))
    assert_matches(y, reference.elementwise.relu_forward(x.astype(np.float64)))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_backward(kernel_device, rng, shape):
    x, dy = randn(rng, *shape), randn(rng, *shape)
    dx = elementwise.relu_backward(cupycnn.asarray(x), cupycnn.asarray(dy))
    assert_matches(dx, reference.elementwise.relu_backward(x.astype(np.float64),
                                                           dy.astype(np.float64)))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add(kernel_device, rng, shape):
    a, b = randn(rng, *shape), randn(rng, *shape)
    out = elementwise.add(cupycnn.asarray(a), cupycnn.asarray(b))
    assert_matches(out, reference.elementwise.add(a.astype(np.float64), b.astype(np.float64)))


def test_add_in_place(kernel_device, rng):
    a, b = randn(rng, 33, 9), randn(rng, 33, 9)
    expected = a.astype(np.float64) + b
    da = cupycnn.asarray(a.copy())
    result = elementwise.add(da, cupycnn.asarray(b), out=da)
    assert result is da
    assert_matches(da, expected)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (300, 10), (2, 3, 5, 7), (4, 7, 33, 17),
                                   (1, 1000, 1, 1)], ids=str)
def test_channel_sum(kernel_device, rng, shape):
    x = randn(rng, *shape)
    out = reduce.channel_sum(cupycnn.asarray(x))
    assert_matches(out, reference.reduce.channel_sum(x.astype(np.float64)))


def test_channel_sum_into_a_given_buffer(kernel_device, rng):
    x = randn(rng, 6, 5, 4)
    out = cupycnn.asarray(np.full(5, np.nan, np.float32))
    assert reduce.channel_sum(cupycnn.asarray(x), out=out) is out
    assert_matches(out, x.astype(np.float64).sum((0, 2)))
