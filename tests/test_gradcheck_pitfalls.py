"""cupycnn.gradcheck on the mistakes a learner's own layer makes: each is caught and named, and
what is legitimate (a compiled kernel kept on the layer, replayed randomness) works."""
import numpy as np
import pytest

import cupycnn
from cupycnn import devices, runtime
from cupycnn.layers import Dense, Layer, ReLU, Residual, Sequential
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.reference import philox


class AccumulatingDense(Dense):
    """Dense whose backward adds into grads instead of overwriting them: right the first time."""

    def backward(self, dy):
        x = self.saved()["x"]
        self.grads["weight"] += dy.T @ x
        self.grads["bias"] += dy.sum(0)
        return dy @ self.params["weight"]


class InPlaceReLU(Layer):
    """ReLU that writes its output into its input: its gradient is right, a Residual's is not."""

    def forward(self, x, training=True):
        x[x < 0] = 0
        self.save_for_backward(y=x)
        return x

    def backward(self, dy):
        return np.where(self.saved()["y"] > 0, dy, 0)


class InPlaceBackwardReLU(ReLU):
    """ReLU whose backward zeroes dy in place and returns it."""

    def backward(self, dy):
        x = self.saved()["x"]
        dy[x <= 0] = 0
        return dy


class Float32Square(Layer):
    """y = x^2 computed in float32 whatever the input: finite differences would measure rounding."""

    def forward(self, x, training=True):
        self.save_for_backward(x=x)
        return (x.astype(np.float32)) ** 2

    def backward(self, dy):
        return 2 * self.saved()["x"] * dy


SCALE_SOURCE = r"""
extern "C" __global__ void scale(const float* x, float* y, float factor, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    y[i] = factor * x[i];
}
"""


class Scale(Layer):
    """y = weight * x with a learner's kernel compiled once and kept on the layer (sim only)."""

    def __init__(self):
        super().__init__()
        self.add_param("weight", np.array([1.5]))
        self.kernel = runtime.load_module(code=SCALE_SOURCE).get_function("scale")

    def _scale(self, x, factor):
        if not devices.runs_kernels():
            return factor * x
        y = devices.empty(x.shape, x.dtype)
        self.kernel((1,), (64,), (x, y, np.float32(factor), np.int32(x.size)))
        return y

    def forward(self, x, training=True):
        self.save_for_backward(x=x)
        return self._scale(x, float(self.params["weight"][0]))

    def backward(self, dy):
        x = self.saved()["x"]
        self.grads["weight"][...] = np.sum(x * dy)
        return self._scale(dy, float(self.params["weight"][0]))


class RandomMask(Layer):
    """Zeroes about half the elements, the mask drawn from Philox by (seed, call counter): the
    pattern of dropout. random_state / set_random_state let a gradient check replay it."""

    def __init__(self, seed=1234):
        super().__init__()
        self.seed, self.calls = seed, 0

    def random_state(self):
        return {"calls": self.calls}

    def set_random_state(self, state):
        self.calls = state["calls"]

    def forward(self, x, training=True):
        mask = philox.uniform(self.seed, self.calls, np.arange(x.size)).reshape(x.shape) < 0.5
        self.calls += 1
        self.save_for_backward(mask=mask)
        return np.where(mask, 2 * x, 0).astype(x.dtype)

    def backward(self, dy):
        return np.where(self.saved()["mask"], 2 * dy, 0).astype(dy.dtype)


def _rows(result):
    return {t.name: t.error for t in result.tensors}


def test_a_backward_that_accumulates_fails(rng):
    x = rng.standard_normal((3, 4))
    assert cupycnn.gradcheck(Dense(4, 2), x).passed
    result = cupycnn.gradcheck(AccumulatingDense(4, 2), x)
    assert not result.passed
    rows = _rows(result)
    assert rows["weight"] < 1e-6 and rows["bias"] < 1e-6          # the first backward is right
    assert rows["weight: 2nd backward differs (accumulates instead of overwriting?)"] == \
        pytest.approx(1 / 3)
    assert "bias: 2nd backward differs (accumulates instead of overwriting?)" in rows
    assert "2nd backward differs" in result.table() and "FAIL" in result.table()


def test_a_forward_that_writes_into_its_input_fails(rng):
    x = rng.standard_normal((4, 5))
    x[np.abs(x) < 0.05] = 0.5
    result = cupycnn.gradcheck(InPlaceReLU(), x)
    rows = _rows(result)
    assert rows["input"] < 1e-6          # the derivative is computed from untouched inputs
    assert rows["input: forward changed it in place"] > 0.1
    assert not result.passed


def test_a_backward_that_writes_into_dy_fails(rng):
    x = rng.standard_normal((4, 5))
    x[np.abs(x) < 0.05] = 0.5
    result = cupycnn.gradcheck(InPlaceBackwardReLU(), x)
    assert "dy: backward changed it in place" in _rows(result)
    assert not result.passed
    # Why it matters: in a Residual the shortcut receives the zeroed dy.
    result = cupycnn.gradcheck(Residual(InPlaceBackwardReLU()), x)
    assert _rows(result)["input"] > 1e-3


def test_a_forward_in_the_wrong_dtype_is_named(rng):
    with pytest.raises(ValueError, match=r"Float32Square\(\)\.forward returned float32 for a "
                                         r"float64 input; a layer must compute in its input's "
                                         r"dtype"):
        cupycnn.gradcheck(Float32Square(), rng.standard_normal((2, 3)))


def test_a_compiled_kernel_kept_on_the_layer_is_shared_not_copied(rng):
    cupycnn.use("sim")
    layer = Scale()
    # x and dy positive: the weight's gradient sum(x * dy) then has no cancellation, which a
    # float32 sum could not keep to 1e-5.
    result = cupycnn.gradcheck(layer, rng.uniform(0.5, 2, (3, 4)), dy=rng.uniform(0.5, 2, (3, 4)),
                               device="sim")
    assert result.passed, result.table()
    assert [t.name for t in result.tensors] == ["input", "weight"]


def test_randomness_is_replayed_the_same_on_both_sides(rng):
    """The random state is taken before any forward, so the float64 and the kernel-device copies
    draw the same masks (also when dy has to be drawn after a first forward)."""
    x = rng.standard_normal((4, 6))
    layer = Sequential(Dense(6, 6), RandomMask())
    for device in ("numpy", "sim"):
        result = cupycnn.gradcheck(layer, x, device=device)
        assert result.passed, result.table()
    assert layer[1].calls == 0                      # the original is not touched


def test_argument_mistakes_are_named(rng):
    x = rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match="give a layer, a loss, or both"):
        cupycnn.gradcheck(None, x)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy\(label_smoothing=0.0\) needs "
                                         r"labels="):
        cupycnn.gradcheck(None, x, loss=SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="labels= is for a loss"):
        cupycnn.gradcheck(Dense(3, 2), x, labels=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"dy has shape \(2,\) but the layer's output has shape "
                                         r"\(2, 2\)"):
        cupycnn.gradcheck(Dense(3, 2), x, dy=np.ones(2))


def test_a_composite_is_named_on_one_line(rng):
    result = cupycnn.gradcheck(Sequential(Dense(3, 3), ReLU()), rng.standard_normal((2, 3)))
    assert result.layer == "Sequential(...)"
    assert all("\n" not in line for line in result.rows()[0][:2])
    result = cupycnn.gradcheck(None, rng.standard_normal((2, 3)), loss=SoftmaxCrossEntropy(0.1),
                               labels=np.array([0, 2]))
    assert result.layer == "SoftmaxCrossEntropy(label_smoothing=0.1)" and result.passed
