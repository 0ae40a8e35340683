"""kernels/metrics.cu against reference/metrics.py."""
import numpy as np
import pytest

import cupycnn
from cupycnn.ops import metrics
from cupycnn.reference import metrics as reference


@pytest.mark.parametrize("N, C", [(1, 1), (1, 10), (7, 3), (300, 10), (1000, 17)])
def test_accumulate_metrics(kernel_device, rng, N, C):
    logits = rng.standard_normal((N, C)).astype(np.float32)
    logits[::5, 0] = logits[::5].max(1) + 0.5            # some rows with a known argmax
    labels = rng.integers(0, C, N).astype(np.int32)
    labels[::3] = np.argmax(logits[::3], 1)               # some right answers
    sums = metrics.new_sums()
    expected = np.zeros(3)
    for loss in (0.75, 1.5):
        metrics.accumulate_metrics(cupycnn.asarray(logits), cupycnn.asarray(labels),
                                   cupycnn.asarray(np.array(loss, np.float32)), sums)
        reference.accumulate_metrics(logits, labels, loss, expected)
    got = cupycnn.asnumpy(sums)
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    loss, accuracy, count = metrics.read_sums(sums)
    assert count == 2 * N and accuracy == expected[1] / (2 * N)


def test_ties_take_the_first_maximum(kernel_device):
    logits = np.array([[1, 3, 3], [2, 2, 2]], np.float32)
    sums = metrics.new_sums()
    metrics.accumulate_metrics(cupycnn.asarray(logits), cupycnn.asarray(np.array([1, 0], np.int32)),
                               cupycnn.asarray(np.array(0.0, np.float32)), sums)
    assert cupycnn.asnumpy(sums)[1] == 2


def test_label_dtype_and_shape_checks(rng):
    cupycnn.use("sim")
    logits = cupycnn.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    loss = cupycnn.asarray(np.array(1.0, np.float32))
    with pytest.raises(ValueError, match=r"labels must have shape \(N=4,\), got \(5,\)"):
        metrics.accumulate_metrics(logits, np.zeros(5, np.int32), loss, metrics.new_sums())
    with pytest.raises(ValueError, match="labels must be int32"):
        metrics.accumulate_metrics(logits, np.zeros(4, np.int64), loss, metrics.new_sums())
