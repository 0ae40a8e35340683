"""cupycnn.gradcheck itself: it passes right backwards, fails wrong ones, touches nothing."""
import numpy as np
import pytest

import cupycnn
from cupycnn.layers import Dense, ReLU
from helpers import WrongScale


def test_right_backward_passes(rng):
    cupycnn.use("numpy")
    result = cupycnn.gradcheck(Dense(4, 3), rng.standard_normal((5, 4)))
    assert result.passed and result.worst < 1e-8
    assert [t.name for t in result.tensors] == ["input", "weight", "bias"]
    assert all(t.checked == t.size for t in result.tensors)


def test_wrong_backward_fails(rng):
    result = cupycnn.gradcheck(WrongScale(), rng.standard_normal((3, 3)))
    assert not result.passed
    assert result.tensors[0].error == pytest.approx(1 / 3, rel=1e-6)
    assert "FAIL" in result.table()


def test_original_layer_is_untouched(rng):
    cupycnn.use("sim")
    layer = Dense(3, 2)
    before = {k: v.copy() for k, v in layer.params.items()}
    cupycnn.gradcheck(layer, rng.standard_normal((2, 3)))
    for k, v in layer.params.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, before[k])
    assert cupycnn.device() == "sim"


def test_kernel_gradients_against_the_float64_derivative(rng):
    x = rng.standard_normal((6, 5))
    x[np.abs(x) < 0.05] = 0.3                      # off the kink
    for layer in (Dense(5, 4), ReLU()):
        result = cupycnn.gradcheck(layer, x, device="sim")
        assert result.passed, result.table()
        assert result.tolerance == 1e-5


def test_subsampled_elements(rng):
    result = cupycnn.gradcheck(Dense(30, 20), rng.standard_normal((4, 30)), max_per_tensor=25)
    assert result.passed
    assert [t.checked for t in result.tensors] == [25, 25, 20]
