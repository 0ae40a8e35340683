"""The Layer base on the first layers, ReLU and Dense, end to end on every device."""
import numpy as np
import pytest

import cupycnn
from cupycnn.layers import Dense, ReLU
from helpers import assert_matches, randn


def _dense_reference(x, w, b, dy):
    return x @ w.T + b, dy @ w, dy.T @ x, dy.sum(0)


def _all_devices():
    return ["numpy", "sim"] + (["cuda"] if cupycnn.cuda_available() else [])


@pytest.mark.parametrize("batch, fan_in, fan_out", [(1, 1, 1), (7, 13, 5), (64, 100, 10)])
def test_dense_forward_backward_on_the_kernel_devices(kernel_device, rng, batch, fan_in, fan_out):
    cupycnn.manual_seed(1)
    layer = Dense(fan_in, fan_out)
    x, dy = randn(rng, batch, fan_in), randn(rng, batch, fan_out)
    w = cupycnn.asnumpy(layer.params["weight"]).astype(np.float64)
    b = cupycnn.asnumpy(layer.params["bias"]).astype(np.float64)
    y = layer.forward(cupycnn.asarray(x))
    dx = layer.backward(cupycnn.asarray(dy))
    ry, rdx, rdw, rdb = _dense_reference(x.astype(np.float64), w, b, dy.astype(np.float64))
    assert_matches(y, ry, "y")
    assert_matches(dx, rdx, "dx")
    assert_matches(layer.grads["weight"], rdw, "dW")
    assert_matches(layer.grads["bias"], rdb, "db")


def test_relu_layer_on_the_kernel_devices(kernel_device, rng):
    layer = ReLU()
    x, dy = randn(rng, 4, 3, 5, 5), randn(rng, 4, 3, 5, 5)
    y = layer.forward(cupycnn.asarray(x))
    dx = layer.backward(cupycnn.asarray(dy))
    assert_matches(y, np.maximum(x, 0))
    assert_matches(dx, np.where(x > 0, dy, 0))


def test_same_seed_same_model_on_every_device():
    weights = []
    for name in _all_devices():
        cupycnn.use(name)
        cupycnn.manual_seed(7)
        weights.append(cupycnn.asnumpy(Dense(5, 3).params["weight"]))
    for w in weights[1:]:
        np.testing.assert_array_equal(w, weights[0])


def test_pytorch_default_initialisation_bounds():
    cupycnn.use("numpy")
    layer = Dense(400, 300)
    w = layer.params["weight"]
    assert w.shape == (300, 400) and w.dtype == np.float32
    assert np.abs(w).max() <= 1 / 20 and np.abs(w).max() > 0.9 / 20
    assert np.abs(layer.params["bias"]).max() <= 1 / 20


def test_dense_float64_gradient_matches_finite_differences(rng):
    """A first numerical check of a hand-written backward (the full suite is gradcheck)."""
    cupycnn.use("numpy")
    layer = Dense(4, 3).to(np.float64)
    x = rng.standard_normal((5, 4))
    dy = rng.standard_normal((5, 3))
    layer.forward(x)
    dx = layer.backward(dy)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        numeric[i] = ((layer.forward(xp) - layer.forward(xm)) * dy).sum() / (2 * eps)
    assert np.abs(numeric - dx).max() / max(np.abs(dx).max(), 1e-8) < 1e-7


def test_backward_before_forward_is_an_error(rng):
    cupycnn.use("numpy")
    with pytest.raises(RuntimeError, match=r"Dense\(in_features=3, out_features=2, bias=True\): "
                                           r"backward called before forward"):
        Dense(3, 2).backward(randn(rng, 1, 2))


def test_wrong_input_shape_names_the_layer(rng):
    cupycnn.use("sim")
    layer = Dense(64, 10)
    with pytest.raises(ValueError, match=r"Dense\(in_features=64, out_features=10, bias=True\): "
                                         r"input must have shape \(N, 64\), got \(32, 100\)"):
        layer.forward(cupycnn.asarray(randn(rng, 32, 100)))
    layer.forward(cupycnn.asarray(randn(rng, 2, 64)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 10\), got \(2, 9\)"):
        layer.backward(cupycnn.asarray(randn(rng, 2, 9)))


def test_state_dict_round_trip_and_mismatch_report():
    cupycnn.use("numpy")
    a, b = Dense(4, 3), Dense(4, 3)
    state = a.state_dict()
    assert list(state) == ["weight", "bias"]
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.params["weight"], a.params["weight"])
    with pytest.raises(ValueError, match=r"weight: shape \(3, 4\) in the state, \(2, 4\) in the "
                                         r"model.*") as info:
        Dense(4, 2).load_state_dict(state)
    assert "bias: shape (3,)" in str(info.value)
    with pytest.raises(ValueError, match="missing: bias"):
        Dense(4, 3).load_state_dict({"weight": state["weight"]})
    with pytest.raises(ValueError, match="unexpected: extra"):
        Dense(4, 3).load_state_dict(dict(state, extra=np.zeros(1)))


def test_no_bias():
    cupycnn.use("sim")
    layer = Dense(3, 2, bias=False)
    assert list(layer.params) == ["weight"]
    y = layer.forward(cupycnn.asarray(np.ones((1, 3), np.float32)))
    np.testing.assert_allclose(y, layer.params["weight"].sum(1)[None], rtol=1e-6)
    layer.backward(cupycnn.asarray(np.ones((1, 2), np.float32)))


def test_parameters_can_be_rebound_to_views_of_one_flat_buffer(rng):
    """What an optimizer does: every parameter becomes a view of one buffer; the layer keeps
    working through the views."""
    cupycnn.use("sim")
    layer = Dense(6, 4)
    params = layer.parameters()
    total = sum(p.size for p in params)
    flat, flat_grad = np.zeros(total, np.float32), np.zeros(total, np.float32)
    before = [p.data.copy() for p in params]
    offset = 0
    for p in params:
        p.rebind(flat[offset:offset + p.size].reshape(p.shape),
                 flat_grad[offset:offset + p.size].reshape(p.shape))
        offset += p.size
    for p, old in zip(params, before):
        np.testing.assert_array_equal(p.data, old)
    x, dy = randn(rng, 3, 6), randn(rng, 3, 4)
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_allclose(flat_grad[:24].reshape(4, 6), dy.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat_grad[24:], dy.sum(0), rtol=1e-5, atol=1e-6)
