"""The pooling, dropout and flatten layers: forward and backward on every device against the
reference, PyTorch's semantics and defaults, the dropout mask's life cycle, input checks."""
import copy

import numpy as np
import pytest

import cupycnn
from cupycnn import reference
from cupycnn.layers import AvgPool2D, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D
from helpers import DEVICES, assert_matches, randn


def _f64(a):
    return np.asarray(cupycnn.asnumpy(a), np.float64)


@pytest.mark.parametrize("shape, k, s, p", [((1, 3, 7, 5), 3, 2, 1),
                                            ((2, 5, 8, 9), (2, 3), None, 0),
                                            ((3, 17, 6, 6), 2, (1, 2), (1, 0))], ids=str)
def test_pool_layers_on_the_kernel_devices(kernel_device, rng, shape, k, s, p):
    x = randn(rng, *shape)
    h, w = shape[2:]
    layer = MaxPool2D(k, s, p)
    y = layer.forward(cupycnn.asarray(x))
    ref_y, ref_argmax = reference.pool.max_pool2d_forward(_f64(x), k, s, p)
    dy = randn(rng, *ref_y.shape)
    dx = layer.backward(cupycnn.asarray(dy))
    assert_matches(y, ref_y, "max y")
    assert_matches(dx, reference.pool.max_pool2d_backward(_f64(dy), ref_argmax, (h, w)), "max dx")

    layer = AvgPool2D(k, s, p)
    y = layer.forward(cupycnn.asarray(x))
    dx = layer.backward(cupycnn.asarray(dy))
    assert_matches(y, reference.pool.avg_pool2d_forward(_f64(x), k, s, p), "avg y")
    assert_matches(dx, reference.pool.avg_pool2d_backward(_f64(dy), (h, w), k, s, p), "avg dx")

    layer = GlobalAvgPool2D()
    y = layer.forward(cupycnn.asarray(x))
    dy = randn(rng, *shape[:2])
    dx = layer.backward(cupycnn.asarray(dy))
    assert_matches(y, x.astype(np.float64).mean((2, 3)), "global y")
    assert_matches(dx, np.broadcast_to(dy[:, :, None, None] / (h * w), shape), "global dx")


def test_pool_layers_in_float64_on_numpy(rng):
    cupycnn.use("numpy")
    x = rng.standard_normal((2, 3, 6, 7))
    for layer in (MaxPool2D(3, 2, 1), AvgPool2D(3, 2, 1), GlobalAvgPool2D()):
        y = layer.forward(x)
        assert y.dtype == np.float64
        assert layer.backward(np.ones_like(y)).dtype == np.float64


def test_pytorch_defaults_and_repr():
    layer = MaxPool2D(3)
    assert (layer.kernel_size, layer.stride, layer.padding) == (3, 3, 0)
    assert repr(layer) == "MaxPool2D(kernel_size=3, stride=3, padding=0)"
    assert repr(AvgPool2D((2, 3), 1, (1, 0))) == \
        "AvgPool2D(kernel_size=(2, 3), stride=1, padding=(1, 0))"
    assert repr(GlobalAvgPool2D()) == "GlobalAvgPool2D()"
    assert repr(Dropout()) == "Dropout(p=0.5)"
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    for layer in (MaxPool2D(2), AvgPool2D(2), GlobalAvgPool2D(), Dropout(), Flatten()):
        assert layer.params == {} and layer.state_dict() == {}


def test_avg_pool_counts_padding_as_zeros():
    """count_include_pad=True: a corner window of a ones plane with padding 1 averages 4 ones
    and 5 zeros of padding."""
    cupycnn.use("sim")
    y = cupycnn.asnumpy(AvgPool2D(3, 2, 1).forward(cupycnn.asarray(np.ones((1, 1, 5, 5),
                                                                          np.float32))))
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9],
                                         [4 / 9, 6 / 9, 4 / 9]], rtol=1e-6)


def test_pool_layer_errors_name_the_layer_and_the_shapes(rng):
    cupycnn.use("sim")
    with pytest.raises(ValueError, match=r"MaxPool2D: padding must be between 0 and half the "
                                         r"kernel size .* got padding=\(2, 2\) for "
                                         r"kernel_size=\(3, 3\)"):
        MaxPool2D(3, padding=2)
    with pytest.raises(ValueError, match="AvgPool2D: stride must be positive"):
        AvgPool2D(2, 0)
    with pytest.raises(ValueError, match=r"MaxPool2D\(kernel_size=2, stride=2, padding=0\): "
                                         r"input must have shape \(N, C, H, W\), got \(3, 8, 8\)"):
        MaxPool2D(2).forward(cupycnn.asarray(randn(rng, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"AvgPool2D\(kernel_size=5, stride=5, padding=1\): "
                                         r"input of spatial size \(2, 9\) is too small"):
        AvgPool2D(5, padding=1).forward(cupycnn.asarray(randn(rng, 1, 1, 2, 9)))
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D\(\): input must have shape "
                                         r"\(N, C, H, W\), got \(4, 10\)"):
        GlobalAvgPool2D().forward(cupycnn.asarray(randn(rng, 4, 10)))
    layer = MaxPool2D(2)
    layer.forward(cupycnn.asarray(randn(rng, 2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"MaxPool2D\(kernel_size=2, stride=2, padding=0\)"
                                         r"\.backward: dy must have shape \(2, 3, 4, 4\), got "
                                         r"\(2, 3, 4, 5\)"):
        layer.backward(cupycnn.asarray(randn(rng, 2, 3, 4, 5)))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        AvgPool2D(2).backward(cupycnn.asarray(randn(rng, 1, 1, 1, 1)))


# ------------------------------------------------------------------------------------ dropout

def test_dropout_layer_on_the_kernel_devices(kernel_device, rng):
    layer = Dropout(0.3)
    x, dy = randn(rng, 4, 3, 5, 5), randn(rng, 4, 3, 5, 5)
    stream = layer.calls
    y = layer.forward(cupycnn.asarray(x))
    dx = layer.backward(cupycnn.asarray(dy))
    assert_matches(y, reference.dropout.dropout_forward(_f64(x), 0.3, layer.seed, stream), "y")
    assert_matches(dx, reference.dropout.dropout_backward(_f64(dy), 0.3, layer.seed, stream), "dx")
    # Backward recomputed the forward's mask.
    np.testing.assert_array_equal(cupycnn.asnumpy(y) == 0, cupycnn.asnumpy(dx) == 0)


def test_dropout_draws_a_fresh_mask_per_call_and_replays_a_state(rng):
    cupycnn.use("sim")
    layer = Dropout(0.5)
    x = cupycnn.asarray(np.ones((64, 64), np.float32))
    state = layer.random_state()
    assert state == {"seed": layer.seed, "calls": 0}
    first = cupycnn.asnumpy(layer.forward(x)).copy()
    second = cupycnn.asnumpy(layer.forward(x)).copy()
    assert layer.calls == 2 and 0.4 < ((first == 0) != (second == 0)).mean() < 0.6
    layer.set_random_state(state)
    np.testing.assert_array_equal(cupycnn.asnumpy(layer.forward(x)), first)
    # A copy (what gradcheck makes) replays the same masks.
    clone = copy.deepcopy(layer)
    np.testing.assert_array_equal(cupycnn.asnumpy(clone.forward(x)),
                                  cupycnn.asnumpy(layer.forward(x)))


def test_dropout_seed_comes_from_cupycnn_random_same_mask_on_numpy_and_sim():
    x = np.ones((3, 7, 9), np.float32)
    masks = []
    for device in ("numpy", "sim"):
        cupycnn.use(device)
        cupycnn.manual_seed(5)
        layer = Dropout(0.25)
        layer.forward(cupycnn.asarray(x))                 # the second call's mask, stream 1
        masks.append(cupycnn.asnumpy(layer.forward(cupycnn.asarray(x))) != 0)
    np.testing.assert_array_equal(masks[0], masks[1])
    cupycnn.manual_seed(6)
    assert Dropout(0.25).seed != layer.seed


def test_dropout_eval_is_identity_and_draws_nothing(rng):
    cupycnn.use("sim")
    layer = Dropout(0.5)
    x, dy = cupycnn.asarray(randn(rng, 2, 8)), cupycnn.asarray(randn(rng, 2, 8))
    assert layer.forward(x, training=False) is x
    assert layer.backward(dy) is dy
    assert layer.calls == 0


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_p0_is_identity_and_p1_all_zeros(device, rng):
    cupycnn.use(device)
    x, dy = randn(rng, 5, 6), randn(rng, 5, 6)
    layer = Dropout(0.0)
    np.testing.assert_array_equal(cupycnn.asnumpy(layer.forward(cupycnn.asarray(x))), x)
    np.testing.assert_array_equal(cupycnn.asnumpy(layer.backward(cupycnn.asarray(dy))), dy)
    layer = Dropout(1.0)
    assert (cupycnn.asnumpy(layer.forward(cupycnn.asarray(x))) == 0).all()
    assert (cupycnn.asnumpy(layer.backward(cupycnn.asarray(dy))) == 0).all()


def test_dropout_errors(rng):
    cupycnn.use("sim")
    with pytest.raises(ValueError, match="Dropout: dropout probability has to be between 0 and "
                                         "1, but got -0.1"):
        Dropout(-0.1)
    layer = Dropout()
    layer.forward(cupycnn.asarray(randn(rng, 2, 3)))
    with pytest.raises(ValueError, match=r"Dropout\(p=0.5\)\.backward: dy must have shape "
                                         r"\(2, 3\), got \(3, 2\)"):
        layer.backward(cupycnn.asarray(randn(rng, 3, 2)))


# ------------------------------------------------------------------------------------ flatten

@pytest.mark.parametrize("device", DEVICES)
def test_flatten(device, rng):
    cupycnn.use(device)
    x = cupycnn.asarray(randn(rng, 2, 3, 4, 5))
    layer = Flatten()
    y = layer.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(cupycnn.asnumpy(y), cupycnn.asnumpy(x).reshape(2, 60))
    dy = cupycnn.asarray(randn(rng, 2, 60))
    dx = layer.backward(dy)
    assert dx.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(cupycnn.asnumpy(dx), cupycnn.asnumpy(dy).reshape(2, 3, 4, 5))
    assert Flatten(1, 2).forward(x).shape == (2, 12, 5)
    assert Flatten(0, -2).forward(x).shape == (24, 5)
    assert Flatten().forward(cupycnn.asarray(randn(rng, 7, 1))).shape == (7, 1)


def test_flatten_errors(rng):
    cupycnn.use("sim")
    with pytest.raises(ValueError, match=r"Flatten\(start_dim=1, end_dim=-1\): input must have "
                                         r"at least 2 dimensions to flatten axes 1 to -1, got "
                                         r"shape \(5,\)"):
        Flatten().forward(cupycnn.asarray(randn(rng, 5)))
    layer = Flatten()
    layer.forward(cupycnn.asarray(randn(rng, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 12\), got \(2, 3, 4\)"):
        layer.backward(cupycnn.asarray(randn(rng, 2, 3, 4)))
