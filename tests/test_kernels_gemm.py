"""kernels/gemm.cu against reference/gemm.py: every transpose, odd sizes, bias, alpha/beta,
batches, on every kernel device."""
import numpy as np
import pytest

import cupycnn
from cupycnn import reference
from cupycnn.ops.gemm import gemm
from helpers import assert_matches, randn

TRANSPOSES = [(False, False), (False, True), (True, False)]
# Sizes below, at and above the 64 x 64 x 16 tile, size 1 on every axis, primes.
SIZES = [(1, 1, 1), (1, 17, 5), (17, 1, 3), (5, 3, 1), (64, 64, 16), (65, 70, 33),
         (130, 3, 257), (3, 131, 100)]


def _operands(rng, M, N, K, ta, tb, batch=()):
    a = randn(rng, *batch, *((K, M) if ta else (M, K)))
    b = randn(rng, *batch, *((N, K) if tb else (K, N)))
    return a, b


@pytest.mark.parametrize("ta, tb", TRANSPOSES, ids=["nn", "nt", "tn"])
@pytest.mark.parametrize("M, N, K", SIZES, ids=lambda v: str(v))
def test_gemm(kernel_device, rng, M, N, K, ta, tb):
    a, b = _operands(rng, M, N, K, ta, tb)
    out = gemm(cupycnn.asarray(a), cupycnn.asarray(b), ta, tb)
    assert_matches(out, reference.gemm.gemm(a.astype(np.float64), b.astype(np.float64), ta, tb))


@pytest.mark.parametrize("ta, tb", TRANSPOSES, ids=["nn", "nt", "tn"])
@pytest.mark.parametrize("bias_per", ["row", "column"])
def test_gemm_bias_alpha_beta(kernel_device, rng, ta, tb, bias_per):
    M, N, K = 67, 45, 29
    a, b = _operands(rng, M, N, K, ta, tb)
    bias = randn(rng, M if bias_per == "row" else N)
    c = randn(rng, M, N)
    out = cupycnn.asarray(c.copy())
    result = gemm(cupycnn.asarray(a), cupycnn.asarray(b), ta, tb, alpha=0.5, beta=-1.5, out=out,
                  bias=cupycnn.asarray(bias), bias_per=bias_per)
    assert result is out
    expected = reference.gemm.gemm(a.astype(np.float64), b.astype(np.float64), ta, tb, alpha=0.5,
                                   beta=-1.5, out=c.astype(np.float64),
                                   bias=bias.astype(np.float64), bias_per=bias_per)
    assert_matches(out, expected)


@pytest.mark.parametrize("shared", ["none", "a", "b"])
def test_gemm_batched(kernel_device, rng, shared):
    batch, M, N, K = 3, 19, 70, 21
    a = randn(rng, *(() if shared == "a" else (batch,)), M, K)
    b = randn(rng, *(() if shared == "b" else (batch,)), N, K)
    out = gemm(cupycnn.asarray(a), cupycnn.asarray(b), transpose_b=True)
    assert_matches(out, reference.gemm.gemm(a.astype(np.float64), b.astype(np.float64),
                                            transpose_b=True))


def test_gemm_with_beta_requires_out(kernel_device, rng):
    with pytest.raises(ValueError, match="out must be given"):
        gemm(cupycnn.asarray(randn(rng, 2, 3)), cupycnn.asarray(randn(rng, 3, 4)), beta=1.0)
