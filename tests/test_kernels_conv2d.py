"""kernels/conv2d.cu against reference/conv2d.py (forward, input gradient, weight gradient and its
split reduction) on every kernel device; the reference against the defining sums; input checks."""
import numpy as np
import pytest

import cupycnn
from cupycnn.ops import conv2d as ops
from cupycnn.reference import conv2d as reference
from helpers import assert_matches, randn

# (batch, C_in, H, W, C_out, kernel_size, stride, padding): batch 1, odd and non-square inputs,
# 1x1, 3x3, 5x5, 3x5 and 2x3 kernels, strides 1, 2, 3 (larger than the kernel) and unequal
# ones, padding 0, 1, 2 (stride 3 with padding 1 and 2 tells the input gradient's phases
# apart), channel counts that are no multiple of a tile (3, 5, 17, 70 > 64), an output of 1x1,
# more output pixels than a 64-wide tile, a reduction long enough to be split for the weight
# gradient, and several tiles along both M and P (rows and columns of the result) at once.
SPLIT_CASE = (2, 3, 16, 12, 8, 3, 1, 1)     # 384 output pixels: the weight gradient splits in 3
CASES = [
    (1, 3, 7, 7, 5, 3, 1, 1),
    (2, 5, 9, 6, 17, 1, 1, 0),
    (2, 3, 11, 8, 4, 5, 2, 2),
    (2, 4, 7, 10, 6, (3, 5), (2, 1), (1, 2)),
    (3, 70, 5, 5, 70, 3, 2, 1),
    (2, 17, 3, 3, 3, 3, 1, 0),
    (2, 6, 8, 8, 9, 1, 2, 0),
    (1, 2, 8, 7, 3, (2, 3), (3, 3), (1, 2)),
    (2, 5, 4, 9, 7, 3, 1, 2),
    SPLIT_CASE,
    (2, 20, 13, 11, 66, 3, 1, 1),
]
IDS = ["b1-3x3-p1", "1x1-17out", "5x5-s2-p2", "3x5-s21-p12", "70ch-s2", "out1x1",
       "1x1-s2-shortcut", "2x3-s3-p12", "3x3-p2-small", "split-weight-grad", "multi-tile"]


def _make(rng, case, bias=True):
    n, c, h, w, o, k, s, p = case
    kh, kw = reference.pair(k)
    x = randn(rng, n, c, h, w)
    weight = randn(rng, o, c, kh, kw)
    b = randn(rng, o) if bias else None
    ho, wo = reference.output_size(h, w, (kh, kw), s, p)
    dy = randn(rng, n, o, ho, wo)
    return x, weight, b, dy, s, p


def _f64(a):
    return None if a is None else a.astype(np.float64)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward(kernel_device, rng, case):
    x, w, b, _, s, p = _make(rng, case)
    y = ops.conv2d_forward(cupycnn.asarray(x), cupycnn.asarray(w), cupycnn.asarray(b), s, p)
    assert_matches(y, reference.conv2d_forward(_f64(x), _f64(w), _f64(b), s, p), "y")


def test_forward_without_bias(kernel_device, rng):
    x, w, _, _, s, p = _make(rng, CASES[3], bias=False)
    y = ops.conv2d_forward(cupycnn.asarray(x), cupycnn.asarray(w), None, s, p)
    assert_matches(y, reference.conv2d_forward(_f64(x), _f64(w), None, s, p), "y")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_input(kernel_device, rng, case):
    x, w, _, dy, s, p = _make(rng, case)
    dx = ops.conv2d_backward_input(cupycnn.asarray(dy), cupycnn.asarray(w), x.shape, s, p)
    assert_matches(dx, reference.conv2d_backward_input(_f64(dy), _f64(w), x.shape, s, p), "dx")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_weight(kernel_device, rng, case):
    x, w, _, dy, s, p = _make(rng, case)
    dw = ops.conv2d_backward_weight(cupycnn.asarray(dy), cupycnn.asarray(x), w.shape, s, p)
    assert_matches(dw, reference.conv2d_backward_weight(_f64(dy), _f64(x), w.shape, s, p), "dw")


def test_the_long_case_splits_its_weight_gradient():
    """The split path (partials + conv2d_backward_weight_reduce) is what SPLIT_CASE exercises."""
    n, c, h, w, o, k, s, p = SPLIT_CASE
    ho, wo = reference.output_size(h, w, k, s, p)
    splits, split_len = ops.weight_grad_splits(o, c * 9, n * ho * wo)
    assert splits == 3 and split_len == 128
    assert ops.weight_grad_splits(64, 27, 128 * 32 * 32) == (512, 256)   # ResNet's first layer
    assert ops.weight_grad_splits(512, 4608, 128 * 4 * 4) == (1, 2048)   # 576 tiles: no split


@pytest.mark.parametrize("splits", [1, 2, 5, 100])
def test_backward_weight_any_split_count(kernel_device, rng, splits):
    # 2 * 9 * 13 = 234 output pixels: chunks of 16 * k pixels with a ragged last one; 100 asks
    # for more chunks than there are 16-pixel steps (clamped to 15).
    x, w, _, dy, s, p = _make(rng, (2, 4, 9, 13, 5, 3, 1, 1))
    out = cupycnn.asarray(np.full(w.shape, np.nan, np.float32))
    dw = ops.conv2d_backward_weight(cupycnn.asarray(dy), cupycnn.asarray(x), w.shape, s, p,
                                    out=out, splits=splits)
    assert dw is out
    assert_matches(dw, reference.conv2d_backward_weight(_f64(dy), _f64(x), w.shape, s, p), "dw")


def test_weight_gradient_is_bitwise_reproducible_in_every_thread_order(rng):
    """No atomics, fixed reduction order: every thread and block order gives the same bits."""
    from cupycnn import sim
    cupycnn.use("sim")
    x, w, _, dy, s, p = _make(rng, SPLIT_CASE)
    results = []
    for order in sim.ORDERS:
        sim.set_thread_order(order, seed=3)
        results.append(ops.conv2d_backward_weight(dy, x, w.shape, s, p))
        results.append(ops.conv2d_backward_input(dy, w, x.shape, s, p))
    for a, b in zip(results[2:], results[:-2]):
        np.testing.assert_array_equal(a, b)


def test_batch_of_zero_images(kernel_device, rng):
    x, w, b, dy, s, p = _make(rng, (1, 3, 5, 5, 4, 3, 1, 1))
    x, dy = x[:0], dy[:0]
    X, W, B, DY = (cupycnn.asarray(a) for a in (x, w, b, dy))
    assert ops.conv2d_forward(X, W, B, s, p).shape == (0, 4, 5, 5)
    assert ops.conv2d_backward_input(DY, W, x.shape, s, p).shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(cupycnn.asnumpy(ops.conv2d_backward_weight(DY, X, w.shape, s, p)),
                                  np.zeros(w.shape, np.float32))


# ------------------------------------------------------------------------------- the reference

def _direct(x, w, b, stride, padding):
    """The definition, one output element at a time."""
    (sh, sw), (ph, pw) = reference.pair(stride), reference.pair(padding)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = reference.output_size(h, wd, (kh, kw), stride, padding)
    y = np.zeros((n, o, ho, wo))
    for idx in np.ndindex(y.shape):
        img, oc, i, j = idx
        total = b[oc]
        for ci, r, s in np.ndindex(c, kh, kw):
            hh, ww = i * sh - ph + r, j * sw - pw + s
            if 0 <= hh < h and 0 <= ww < wd:
                total += w[oc, ci, r, s] * x[img, ci, hh, ww]
        y[idx] = total
    return y


@pytest.mark.parametrize("case", [(2, 3, 6, 5, 2, (3, 2), (2, 1), (1, 0)),
                                  (1, 2, 5, 7, 3, 1, 3, 2)], ids=["3x2-s21-p10", "1x1-s3-p2"])
def test_reference_is_the_definition(rng, case):
    """Forward against the defining sum; each backward against the adjoint identity
    <dy, conv(x, w)> = <dx, x> = <dw, w> (conv is linear in x and in w), elementwise through
    unit vectors: dx[e] = <dy, conv(unit_e, w)>, dw[e] = <dy, conv(x, unit_e)>."""
    x, w, b, dy, s, p = (_f64(a) if isinstance(a, np.ndarray) else a for a in _make(rng, case))
    np.testing.assert_allclose(reference.conv2d_forward(x, w, b, s, p), _direct(x, w, b, s, p),
                               rtol=1e-12, atol=1e-12)
    zero_bias = np.zeros(w.shape[0])
    dx = reference.conv2d_backward_input(dy, w, x.shape, s, p)
    dw = reference.conv2d_backward_weight(dy, x, w.shape, s, p)
    for grad, shape, conv in ((dx, x.shape, lambda u: _direct(u, w, zero_bias, s, p)),
                              (dw, w.shape, lambda u: _direct(x, u, zero_bias, s, p))):
        expected = np.zeros(shape)
        for e in np.ndindex(shape):
            unit = np.zeros(shape)
            unit[e] = 1.0
            expected[e] = np.sum(dy * conv(unit))
        np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12)


def test_reference_keeps_float32(rng):
    x, w, b, dy, s, p = _make(rng, CASES[2])
    assert reference.conv2d_forward(x, w, b, s, p).dtype == np.float32
    assert reference.conv2d_backward_input(dy, w, x.shape, s, p).dtype == np.float32
    assert reference.conv2d_backward_weight(dy, x, w.shape, s, p).dtype == np.float32


# ------------------------------------------------------------------------------- input checks

@pytest.fixture(params=["sim", "numpy"])
def cpu_device(request):
    cupycnn.use(request.param)
    return request.param


def test_channel_mismatch_names_op_and_shapes(cpu_device, rng):
    x, w = cupycnn.asarray(randn(rng, 2, 4, 8, 8)), cupycnn.asarray(randn(rng, 6, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d_forward: weight must have shape "
                                         r"\(C_out, C_in=4, kh, kw\), got \(6, 3, 3, 3\)"):
        ops.conv2d_forward(x, w)
    with pytest.raises(ValueError, match=r"conv2d_forward: bias must have shape \(C_out=6,\), "
                                         r"got \(5,\)"):
        ops.conv2d_forward(x, cupycnn.asarray(randn(rng, 6, 4, 3, 3)),
                           cupycnn.asarray(randn(rng, 5)))
    with pytest.raises(ValueError, match=r"conv2d_backward_weight: x must have shape "
                                         r"\(N, 3, H, W\), got \(2, 4, 8, 8\)"):
        ops.conv2d_backward_weight(cupycnn.asarray(randn(rng, 2, 6, 6, 6)), x, (6, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d_backward_input: input_shape must have shape "
                                         r"\(N, C_in=3, H, W\) .* got \(2, 4, 8, 8\)"):
        ops.conv2d_backward_input(cupycnn.asarray(randn(rng, 2, 6, 6, 6)), w, (2, 4, 8, 8))


def test_dy_must_have_the_output_shape(cpu_device, rng):
    w = cupycnn.asarray(randn(rng, 6, 3, 3, 3))
    dy = cupycnn.asarray(randn(rng, 2, 6, 8, 8))
    with pytest.raises(ValueError, match=r"conv2d_backward_input: dy must have shape "
                                         r"\(2, 6, 4, 4\), got \(2, 6, 8, 8\)"):
        ops.conv2d_backward_input(dy, w, (2, 3, 8, 8), stride=2, padding=1)
    with pytest.raises(ValueError, match=r"conv2d_backward_weight: dy must have shape "
                                         r"\(2, 6, 6, 6\), got \(2, 6, 8, 8\)"):
        ops.conv2d_backward_weight(dy, cupycnn.asarray(randn(rng, 2, 3, 8, 8)), (6, 3, 3, 3))


def test_kernel_larger_than_the_padded_input(cpu_device, rng):
    x, w = cupycnn.asarray(randn(rng, 1, 2, 4, 9)), cupycnn.asarray(randn(rng, 3, 2, 5, 5))
    with pytest.raises(ValueError, match=r"conv2d_forward: the 5x5 kernel does not fit the "
                                         r"input: input 4x9 padded by \(0, 0\) gives an output "
                                         r"of 0x5; expected at least 1x1"):
        ops.conv2d_forward(x, w)
    assert ops.conv2d_forward(x, w, padding=(1, 0)).shape == (1, 3, 2, 5)


def test_bad_stride_and_padding(cpu_device, rng):
    x, w = cupycnn.asarray(randn(rng, 1, 2, 6, 6)), cupycnn.asarray(randn(rng, 3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"^conv2d_forward: in_channels, out_channels, "
                                         r"kernel_size and stride must be at least 1 and padding "
                                         r"at least 0, got in_channels=2, out_channels=3, "
                                         r"kernel_size=\(3, 3\), stride=\(0, 1\), "
                                         r"padding=\(0, 0\)$"):
        ops.conv2d_forward(x, w, stride=(0, 1))
    with pytest.raises(ValueError, match=r"conv2d_forward: .* padding at least 0, .* "
                                         r"padding=\(-1, -1\)$"):
        ops.conv2d_forward(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"conv2d_forward: stride must be an int or a pair"):
        ops.conv2d_forward(x, w, stride=(1, 2, 3))


def test_dtype_device_and_layout(rng):
    cupycnn.use("sim")
    w = randn(rng, 3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"conv2d_forward: x must be float32 or bf16 \(uint16\) "
                                         r"on the sim device, got float64"):
        ops.conv2d_forward(randn(rng, 1, 2, 5, 5, dtype=np.float64), w)
    with pytest.raises(ValueError, match=r"conv2d_forward: x must be C-contiguous"):
        ops.conv2d_forward(randn(rng, 1, 2, 5, 10)[..., ::2], w)
    with pytest.raises(ValueError, match="conv2d_forward: x must be a numpy.ndarray"):
        ops.conv2d_forward([[1.0]], w)
    with pytest.raises(ValueError, match="conv2d_backward_weight: out must have shape "
                                         r"\(3, 2, 3, 3\), got \(3, 2, 3, 2\)"):
        ops.conv2d_backward_weight(randn(rng, 1, 3, 3, 3), randn(rng, 1, 2, 5, 5), w.shape,
                                   out=np.zeros((3, 2, 3, 2), np.float32))
    with pytest.raises(ValueError, match=r"conv2d_backward_input: stride \(300, 300\) has "
                                         r"90000 phases, more than the 65535 grid slices"):
        ops.conv2d_backward_input(randn(rng, 1, 3, 1, 1), w, (1, 2, 3, 3), stride=300)
    cupycnn.use("numpy")       # numpy computes in float64 too, but one dtype per call
    with pytest.raises(ValueError, match="conv2d_forward: weight is float32 but x is float64"):
        ops.conv2d_forward(randn(rng, 1, 2, 5, 5, dtype=np.float64), w)
