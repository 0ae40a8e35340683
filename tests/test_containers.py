"""Sequential and Residual: forward and backward against the same maths written out in float64,
on every kernel device; PyTorch's container protocol and state_dict names; misuse."""
import copy
from collections import OrderedDict

import numpy as np
import pytest

import cupycnn
from cupycnn.layers import Dense, Layer, ReLU, Residual, Sequential
from helpers import assert_matches, randn


class Scale(Layer):
    """y = weight * x, one scalar parameter: a test layer of our own, host NumPy on any device."""

    def __init__(self, value=1.5):
        super().__init__()
        self.add_param("weight", np.array([value]))

    def forward(self, x, training=True):
        self.check_input(x, None)
        self.save_for_backward(x=x)
        return (x * self.params["weight"][0]).astype(x.dtype)

    def backward(self, dy):
        x = self.saved()["x"]
        self.grads["weight"][...] = np.sum(x * dy)
        return (dy * self.params["weight"][0]).astype(dy.dtype)


class TrainingFlag(Layer):
    """Identity that records the training flag it was given."""

    def forward(self, x, training=True):
        self.seen = training
        self.save_for_backward()
        return x

    def backward(self, dy):
        self.saved()
        return dy


def _dense_params(layer):
    return (cupycnn.asnumpy(layer.params["weight"]).astype(np.float64),
            cupycnn.asnumpy(layer.params["bias"]).astype(np.float64))


def _grads(layer):
    return {name: p.grad for name, p in layer.named_parameters()}


def test_sequential_forward_backward(kernel_device, rng):
    """Dense-ReLU-Dense-Scale: output, input gradient and every parameter gradient against the
    chain rule written out in float64."""
    cupycnn.manual_seed(0)
    model = Sequential(Dense(7, 9), ReLU(), Dense(9, 4), Scale(-0.75))
    x, dy = randn(rng, 5, 7), randn(rng, 5, 4)
    w1, b1 = _dense_params(model[0])
    w2, b2 = _dense_params(model[2])
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    h = x64 @ w1.T + b1
    a = np.maximum(h, 0)
    z = a @ w2.T + b2
    y = -0.75 * z
    dz = -0.75 * dy64
    da = dz @ w2
    dh = np.where(h > 0, da, 0)

    out = model.forward(cupycnn.asarray(x))
    dx = model.backward(cupycnn.asarray(dy))
    assert_matches(out, y, "y")
    assert_matches(dx, dh @ w1, "dx")
    grads = _grads(model)
    assert list(grads) == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight"]
    assert_matches(grads["0.weight"], dh.T @ x64, "0.weight")
    assert_matches(grads["0.bias"], dh.sum(0), "0.bias")
    assert_matches(grads["2.weight"], dz.T @ a, "2.weight")
    assert_matches(grads["2.bias"], dz.sum(0), "2.bias")
    # A sum of terms of both signs: float32 keeps it to a fraction of the sum of magnitudes,
    # not of the (possibly much smaller) sum itself.
    np.testing.assert_allclose(cupycnn.asnumpy(grads["3.weight"]), [np.sum(z * dy64)], rtol=0,
                               atol=1e-5 * np.sum(np.abs(z * dy64)))


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
def test_residual_forward_backward(kernel_device, rng, projection):
    cupycnn.manual_seed(1)
    main = Sequential(Dense(6, 8), ReLU(), Dense(8, 5 if projection else 6))
    shortcut = Dense(6, 5) if projection else None
    block = Residual(main, shortcut)
    x, dy = randn(rng, 3, 6), randn(rng, 3, 5 if projection else 6)
    w1, b1 = _dense_params(main[0])
    w2, b2 = _dense_params(main[2])
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    h = x64 @ w1.T + b1
    y = np.maximum(h, 0) @ w2.T + b2
    dh = np.where(h > 0, dy64 @ w2, 0)
    dx = dh @ w1
    if projection:
        ws, bs = _dense_params(shortcut)
        y, dx = y + x64 @ ws.T + bs, dx + dy64 @ ws
    else:
        y, dx = y + x64, dx + dy64

    out = block.forward(cupycnn.asarray(x))
    dy_device = cupycnn.asarray(dy)
    got_dx = block.backward(dy_device)
    assert_matches(out, y, "y")
    assert_matches(got_dx, dx, "dx")
    np.testing.assert_array_equal(cupycnn.asnumpy(dy_device), dy)    # dy is the caller's
    grads = _grads(block)
    assert_matches(grads["main.0.weight"], dh.T @ x64, "main.0.weight")
    assert_matches(grads["main.2.weight"], (dy64.T @ np.maximum(h, 0)), "main.2.weight")
    if projection:
        assert_matches(grads["shortcut.weight"], dy64.T @ x64, "shortcut.weight")
        assert_matches(grads["shortcut.bias"], dy64.sum(0), "shortcut.bias")


def test_residual_identity_branch_does_not_alias_dy(rng):
    """Both branches identity-like (they hand dy back): the result is 2 dy in a new array and
    the caller's dy is unchanged."""
    cupycnn.use("sim")
    block = Residual(TrainingFlag())
    x, dy = randn(rng, 4, 3), randn(rng, 4, 3)
    np.testing.assert_allclose(block.forward(x), 2 * x, rtol=1e-7)
    dx = block.backward(dy)
    assert dx is not dy
    np.testing.assert_allclose(dx, 2 * dy, rtol=1e-7)


def test_sequential_protocol():
    cupycnn.use("numpy")
    dense1, relu, dense2 = Dense(3, 4), ReLU(), Dense(4, 2)
    model = Sequential(dense1, relu, dense2)
    assert len(model) == 3 and list(model) == [dense1, relu, dense2]
    assert model[0] is dense1 and model[-1] is dense2 and model["1"] is relu
    assert isinstance(model.layers, list) and model.layers == [dense1, relu, dense2]
    assert [type(l).__name__ for l in model.layers()] == ["Sequential", "Dense", "ReLU", "Dense"]
    tail = model[1:]
    assert isinstance(tail, Sequential) and list(tail) == [relu, dense2]
    assert [name for name, _ in tail.named_children()] == ["1", "2"]     # names kept, as PyTorch
    with pytest.raises(IndexError, match="index 3 is out of range for 3 layers"):
        model[3]
    with pytest.raises(KeyError, match="no child named 'fc'"):
        model["fc"]
    extra = ReLU()
    assert model.append(extra) is model and model[3] is extra and len(model) == 4
    assert repr(Sequential(Dense(2, 2), Sequential(ReLU()))) == (
        "Sequential(\n"
        "  (0): Dense(in_features=2, out_features=2, bias=True)\n"
        "  (1): Sequential(\n"
        "    (0): ReLU()\n"
        "  )\n"
        ")")
    assert repr(Sequential()) == "Sequential()"


def test_named_children_and_state_dict_names():
    cupycnn.use("numpy")
    model = Sequential(OrderedDict(fc1=Dense(3, 4), act=ReLU(), fc2=Dense(4, 2)))
    assert model.fc1 is model[0] and model["fc2"] is model[2]
    assert list(model.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    net = Sequential(Dense(3, 3), Residual(Sequential(Dense(3, 3), ReLU()), Dense(3, 3, False)))
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.main.0.weight", "1.main.0.bias",
                                      "1.shortcut.weight"]
    assert [name for name, _ in net.named_parameters()] == list(net.state_dict())
    assert net.num_parameters() == 12 + 12 + 9
    other = Sequential(Dense(3, 3), Residual(Sequential(Dense(3, 3), ReLU()), Dense(3, 3, False)))
    other.load_state_dict(net.state_dict())
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, net.state_dict()[key])
    with pytest.raises(ValueError, match="unexpected: 1.shortcut.weight"):
        Sequential(Dense(3, 3), Residual(Sequential(Dense(3, 3), ReLU()))).load_state_dict(
            dict(net.state_dict()))


def test_bad_construction():
    cupycnn.use("numpy")
    with pytest.raises(TypeError, match="Sequential: child '1' must be a cupycnn Layer, got int"):
        Sequential(ReLU(), 3)
    with pytest.raises(ValueError, match="non-empty string without '.'"):
        Sequential(OrderedDict([("a.b", ReLU())]))
    with pytest.raises(ValueError, match="cannot be named 'forward'"):
        Sequential(OrderedDict(forward=ReLU()))
    with pytest.raises(TypeError, match="Residual: main must be a cupycnn Layer, got function"):
        Residual(lambda x: x)


def test_backward_must_follow_forward(rng):
    cupycnn.use("sim")
    for model, name in ((Sequential(Dense(3, 3)), "Sequential"),
                        (Residual(Dense(3, 3)), "Residual")):
        with pytest.raises(RuntimeError, match=f"{name}: backward called before forward"):
            model.backward(randn(rng, 2, 3))
        model.forward(randn(rng, 2, 3))
        model.backward(randn(rng, 2, 3))
        with pytest.raises(RuntimeError, match=f"{name}: backward called before forward"):
            model.backward(randn(rng, 2, 3))         # twice after one forward
        model.forward(randn(rng, 2, 3))
        with pytest.raises(ValueError, match=rf"{name}.backward: dy must have shape \(2, 3\), "
                                             rf"got \(2, 4\)"):
            model.backward(randn(rng, 2, 4))


def test_a_failed_forward_leaves_nothing_to_go_back_through(rng):
    cupycnn.use("sim")
    model = Sequential(Dense(3, 4), Dense(5, 2))
    model_ok = Sequential(Dense(3, 4))
    model_ok.forward(randn(rng, 2, 3))
    with pytest.raises(ValueError, match=r"Sequential layer '1': Dense\(in_features=5, "
                                         r"out_features=2, bias=True\): input must have shape "
                                         r"\(N, 5\), got \(2, 4\)"):
        model.forward(randn(rng, 2, 3))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        model.backward(randn(rng, 2, 2))


def test_residual_branches_must_agree(rng):
    cupycnn.use("sim")
    with pytest.raises(ValueError, match=r"Residual: the main branch gives shape \(2, 4\) but "
                                         r"the identity shortcut \(the input\) gives \(2, 3\)"):
        Residual(Dense(3, 4)).forward(randn(rng, 2, 3))
    with pytest.raises(ValueError, match=r"main branch gives shape \(2, 4\) but the shortcut "
                                         r"gives \(2, 5\)"):
        Residual(Dense(3, 4), Dense(3, 5)).forward(randn(rng, 2, 3))
    with pytest.raises(ValueError, match=r"Residual shortcut: Dense\(in_features=4, "
                                         r"out_features=3, bias=True\): input must have shape "
                                         r"\(N, 4\), got \(2, 3\)"):
        Residual(Dense(3, 3), Dense(4, 3)).forward(randn(rng, 2, 3))


def test_training_flag_reaches_every_child(rng):
    cupycnn.use("numpy")
    inner, outer = TrainingFlag(), TrainingFlag()
    model = Sequential(outer, Residual(Sequential(inner)))
    for flag in (False, True):
        model.forward(randn(rng, 2, 2), training=flag)
        assert inner.seen is flag and outer.seen is flag


def test_empty_sequential_is_the_identity(rng):
    cupycnn.use("sim")
    x = randn(rng, 2, 3)
    model = Sequential()
    assert model.forward(x) is x and model.backward(x) is x


def test_copy_and_move_between_dtypes(rng):
    """deepcopy and to() (what gradcheck does) see through the composites."""
    cupycnn.use("numpy")
    model = Sequential(Dense(3, 4), Residual(Sequential(Dense(4, 4), ReLU())), Dense(4, 2))
    twin = copy.deepcopy(model).to(np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64
               for p in twin.parameters())
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    assert twin[0] is not model[0] and twin[1].main[0] is not model[1].main[0]
    x = rng.standard_normal((2, 3))
    np.testing.assert_allclose(twin.forward(x), model.forward(x.astype(np.float32)), rtol=1e-5,
                               atol=1e-6)
