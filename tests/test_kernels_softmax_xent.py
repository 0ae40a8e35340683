"""kernels/softmax_xent.cu against reference/softmax_xent.py, on every kernel device; the
reference against the definition; the loss's labels, bad input and PyTorch's semantics."""
import numpy as np
import pytest

import cupycnn
from cupycnn import reference
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.ops import softmax_xent as ops
from helpers import DEVICES, assert_matches, randn

ref = reference.softmax_xent

# Class counts 1, 2, 10, 1000 and some not a multiple of the warp; batch 1 and batches that are
# not a multiple of the 4 rows a block takes.
SHAPES = [(1, 1), (1, 2), (3, 10), (5, 1000), (9, 33), (64, 10)]
INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def _labels(rng, n, classes, dtype=np.int64):
    return rng.integers(0, classes, n).astype(dtype)


def _reference(logits, labels, smoothing):
    loss, row_max, row_sum = ref.softmax_xent_forward(logits.astype(np.float64), labels, smoothing)
    grad = ref.softmax_xent_backward(logits.astype(np.float64), labels, row_max, row_sum,
                                     smoothing)
    return loss, row_max, row_sum, grad


def _logits_off_the_optimum(rng, labels, classes, smoothing):
    """Random logits, with every row that comes near the loss's minimum redrawn. There each
    gradient element softmax - target is a difference of nearly equal numbers: float32 rounding
    of the softmax (6e-8 near 1) then is the whole of it, in any implementation, as the finite
    difference at a kink of ReLU is meaningless. (C = 1 is exempt: its gradient is exactly 0.)"""
    logits = randn(rng, len(labels), classes)
    for _ in range(100):
        grad = _reference(logits, labels, smoothing)[3] * len(labels)
        near = (np.linalg.norm(grad, axis=1) < 0.05) & (classes > 1)
        if not near.any():
            return logits
        logits[near] = randn(rng, int(near.sum()), classes)
    raise AssertionError("no logits away from the optimum in 100 draws")


def _definition(logits, labels, smoothing):
    """PyTorch's cross_entropy written out naively in float64 (fine for moderate logits)."""
    z = logits.astype(np.float64)
    n, classes = z.shape
    log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
    target = np.full(z.shape, smoothing / classes)
    target[np.arange(n), labels] += 1 - smoothing
    softmax = np.exp(log_softmax)
    return -(target * log_softmax).sum() / n, (softmax - target) / n


def _run(logits, labels, smoothing):
    """The loss layer on the current device: (loss, dlogits)."""
    loss_fn = SoftmaxCrossEntropy(smoothing)
    loss = loss_fn.forward(cupycnn.asarray(logits), cupycnn.asarray(labels))
    return loss, loss_fn.backward()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("N, C", SHAPES, ids=str)
def test_forward_and_backward(kernel_device, rng, N, C, smoothing):
    labels = _labels(rng, N, C, np.int32)
    logits = _logits_off_the_optimum(rng, labels, C, smoothing)
    loss, row_max, row_sum = ops.softmax_xent_forward(cupycnn.asarray(logits),
                                                      cupycnn.asarray(labels), smoothing)
    dlogits = ops.softmax_xent_backward(cupycnn.asarray(logits), cupycnn.asarray(labels),
                                        row_max, row_sum, smoothing)
    r_loss, r_max, r_sum, r_grad = _reference(logits, labels, smoothing)
    assert loss.shape == () and loss.dtype == np.float32
    assert_matches(loss, r_loss, "loss")
    assert_matches(row_max, r_max, "row_max")
    assert_matches(row_sum, r_sum, "row_sum")
    assert_matches(dlogits, r_grad, "dlogits")


@pytest.mark.parametrize("scale, offset", [(1e4, 0.0), (1.0, 1e4), (1.0, -1e4), (30.0, 50.0)],
                         ids=["1e4*randn", "1e4+randn", "-1e4+randn", "50+30*randn"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_extreme_logits(kernel_device, rng, scale, offset, smoothing):
    """Logits whose exp overflows float32 (exp(89) already does): no inf, no NaN, and the
    reference's value to float32 precision."""
    N, C = 6, 10
    logits = (offset + scale * randn(rng, N, C)).astype(np.float32)
    labels = _labels(rng, N, C)
    loss, dlogits = _run(logits, labels, smoothing)
    r_loss, _, _, r_grad = _reference(logits, labels, smoothing)
    assert np.isfinite(cupycnn.asnumpy(loss)) and np.isfinite(cupycnn.asnumpy(dlogits)).all()
    assert_matches(loss, r_loss, "loss")
    assert_matches(dlogits, r_grad, "dlogits")


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_labels_of_every_integer_dtype(kernel_device, rng, dtype):
    N, C = 7, 10
    logits, labels = randn(rng, N, C), _labels(rng, N, C, dtype)
    loss, dlogits = _run(logits, labels, 0.1)
    r_loss, _, _, r_grad = _reference(logits, labels.astype(np.int64), 0.1)
    assert_matches(loss, r_loss, "loss")
    assert_matches(dlogits, r_grad, "dlogits")


@pytest.mark.parametrize("n", [1, 5, 256, 1000])
def test_batch_mean(kernel_device, rng, n):
    # Row losses are >= 0, so their sum does not cancel (the mean of n standard normals, near 0,
    # would be ill-conditioned: no float32 sum keeps its relative error below 1e-5).
    values = rng.uniform(0.0, 5.0, n).astype(np.float32)
    assert_matches(ops.batch_mean(cupycnn.asarray(values)),
                   ref.batch_mean(values.astype(np.float64)), "mean")


def test_narrow_labels(kernel_device, rng):
    """int64 labels to int32: values outside [0, C) become -1, never wrap into range."""
    C = 10
    labels = np.concatenate([rng.integers(0, C, 20), [-1, C, 2**32 + 3, -2**32 + 3, 2**31,
                                                      -2**63, 2**63 - 1]]).astype(np.int64)
    out = ops.labels_to_int32(cupycnn.asarray(labels), C, check=False)
    expected = ref.narrow_labels(labels, C)
    assert out.dtype == np.int32
    assert_matches(out, expected, "labels")
    np.testing.assert_array_equal(cupycnn.asnumpy(out), expected)
    assert (expected[20:] == -1).all()
    wide = np.array([2**64 - 1, 2**63, 3], np.uint64)           # uint64 above 2^63 included
    out = ops.labels_to_int32(cupycnn.asarray(wide), C, check=False)
    np.testing.assert_array_equal(cupycnn.asnumpy(out), [-1, -1, 3])


def test_a_bad_label_makes_its_row_nan_in_the_kernels(kernel_device, rng):
    """What cuda does with a bad label (no host check there): NaN for that row, and so for the
    loss; the other rows' gradients are untouched."""
    N, C = 6, 5
    logits = randn(rng, N, C)
    labels = _labels(rng, N, C)
    labels[[1, 4]] = [C, -3]
    loss, row_max, row_sum = ops.softmax_xent_forward(cupycnn.asarray(logits),
                                                      cupycnn.asarray(labels), 0.1,
                                                      check_labels=False)
    dlogits = cupycnn.asnumpy(ops.softmax_xent_backward(
        cupycnn.asarray(logits), cupycnn.asarray(labels), row_max, row_sum, 0.1,
        check_labels=False))
    assert np.isnan(cupycnn.asnumpy(loss))
    assert np.isnan(dlogits[[1, 4]]).all()
    good = [0, 2, 3, 5]
    _, _, _, r_grad = _reference(logits, labels, 0.1)
    assert np.isnan(r_grad[[1, 4]]).all()
    assert_matches(dlogits[good], r_grad[good], "dlogits of the good rows")


@pytest.mark.parametrize("device", ["numpy", "sim"])      # cuda checks no labels (no host read)
def test_a_bad_label_is_named_on_the_host_devices(rng, device):
    cupycnn.use(device)
    logits = cupycnn.asarray(randn(rng, 5, 10))
    loss_fn = SoftmaxCrossEntropy()
    labels = np.array([3, 9, 10, -1, 12], np.int64)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy\(label_smoothing=0.0\): "
                                         r"labels\[2\] = 10 is not a class index for 10 classes "
                                         r"\(expected 0 <= label < 10; 3 bad labels in all\)"):
        loss_fn.forward(logits, cupycnn.asarray(labels))
    with pytest.raises(ValueError, match=r"labels\[0\] = 200 is not a class index"):
        loss_fn.forward(logits, cupycnn.asarray(np.array([200, 0, 0, 0, 0], np.uint8)))
    with pytest.raises(ValueError, match=r"labels\[1\] = 18446744073709551615 is not"):
        loss_fn.forward(logits, cupycnn.asarray(np.array([0, 2**64 - 1, 0, 0, 0], np.uint64)))
    with pytest.raises(ValueError, match=r"softmax_xent_forward: labels\[4\] = -100 is not"):
        ops.softmax_xent_forward(logits, cupycnn.asarray(np.array([0, 1, 2, 3, -100])))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        loss_fn.backward()


@pytest.mark.parametrize("device", DEVICES)
def test_wrong_shapes_and_types_are_named(rng, device):
    cupycnn.use(device)
    loss_fn = SoftmaxCrossEntropy(0.1)
    logits = cupycnn.asarray(randn(rng, 4, 3))
    name = r"SoftmaxCrossEntropy\(label_smoothing=0.1\): "
    with pytest.raises(ValueError, match=name + r"labels must have shape \(N=4,\), got \(5,\)"):
        loss_fn.forward(logits, cupycnn.asarray(np.zeros(5, np.int64)))
    with pytest.raises(ValueError, match=name + r"logits must have shape \(N, C\), got \(12,\)"):
        loss_fn.forward(cupycnn.asarray(randn(rng, 12)), cupycnn.asarray(np.zeros(12, np.int64)))
    with pytest.raises(ValueError, match=name + "labels must be an integer array, got float32"):
        loss_fn.forward(logits, cupycnn.asarray(np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match=name + "N must be at least 1, got 0"):
        loss_fn.forward(cupycnn.asarray(randn(rng, 0, 3)), cupycnn.asarray(np.zeros(0, np.int64)))
    with pytest.raises(ValueError, match=r"softmax_xent_backward: row_sum must have shape "
                                         r"\(N=4,\), got \(3,\)"):
        ops.softmax_xent_backward(logits, cupycnn.asarray(np.zeros(4, np.int32)),
                                  cupycnn.asarray(randn(rng, 4)), cupycnn.asarray(randn(rng, 3)))
    with pytest.raises(ValueError, match="label_smoothing must be between 0.0 and 1.0, got 1.5"):
        SoftmaxCrossEntropy(1.5)


def test_reference_is_pytorchs_cross_entropy(rng):
    """The stable formulation equals the definition, with and without smoothing; the gradient
    rows sum to 0 (softmax and target both sum to 1)."""
    for N, C, e in [(1, 1, 0.0), (4, 2, 0.0), (6, 10, 0.1), (3, 1000, 0.3), (2, 5, 1.0)]:
        logits, labels = rng.standard_normal((N, C)) * 3, _labels(rng, N, C)
        loss, _, _, grad = _reference(logits, labels, e)
        d_loss, d_grad = _definition(logits, labels, e)
        np.testing.assert_allclose(loss, d_loss, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad, d_grad, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(grad.sum(1), 0, atol=1e-15)


def test_known_values():
    cupycnn.use("numpy")
    # Equal logits: the loss is log C whatever the label and smoothing.
    for e in (0.0, 0.25):
        loss = SoftmaxCrossEntropy(e).forward(np.zeros((3, 8)), np.array([0, 5, 7]))
        assert float(loss) == pytest.approx(np.log(8), rel=1e-14)
    # A saturated row: label right -> 0, label wrong -> the gap; smoothing adds e/C * sum of gaps.
    logits = np.array([[1e4, 0.0], [1e4, 0.0]])
    loss_fn = SoftmaxCrossEntropy(0.1)
    loss = loss_fn.forward(logits, np.array([0, 1]))
    expected = ((0 + 0.1 / 2 * 1e4) + (0.9 * 1e4 + 0.1 / 2 * 1e4)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(loss_fn.backward(),
                               np.array([[1 - 0.95, -0.05], [1 - 0.05, -0.95]]) / 2, atol=1e-15)
    # A logit of -inf (a masked class) without smoothing: finite, as PyTorch.
    loss = SoftmaxCrossEntropy().forward(np.array([[0.0, -np.inf, 0.0]]), np.array([0]))
    assert float(loss) == pytest.approx(np.log(2), rel=1e-14)


def test_the_loss_is_deterministic_and_float64_on_numpy(rng):
    cupycnn.use("numpy")
    logits, labels = rng.standard_normal((5, 4)), _labels(rng, 5, 4, np.int16)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, labels)
    assert loss.shape == () and loss.dtype == np.float64
    assert loss_fn.backward().dtype == np.float64
    cupycnn.use("sim")
    logits, labels = randn(rng, 33, 7), _labels(rng, 33, 7)
    first, second = _run(logits, labels, 0.1), _run(logits, labels, 0.1)
    for a, b in zip(first, second):                 # the same bits: a fixed summation order
        np.testing.assert_array_equal(a, b)
