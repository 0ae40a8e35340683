"""The Conv2D layer: forward and backward through the kernels, parameters, PyTorch's defaults,
printing and input checks."""
import math

import numpy as np
import pytest

import cupycnn
from cupycnn.layers import Conv2D
from cupycnn.reference import conv2d as reference
from helpers import assert_matches, randn


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_layer_on_the_kernel_devices(kernel_device, rng, bias):
    cupycnn.manual_seed(2)
    layer = Conv2D(3, 5, (3, 5), stride=(2, 1), padding=(1, 2), bias=bias)
    x = randn(rng, 2, 3, 9, 8)
    y = layer.forward(cupycnn.asarray(x))
    assert y.shape == (2, 5, 5, 8) == layer.output_shape(x.shape)
    dy = randn(rng, *y.shape)
    dx = layer.backward(cupycnn.asarray(dy))
    w = cupycnn.asnumpy(layer.params["weight"]).astype(np.float64)
    b = cupycnn.asnumpy(layer.params["bias"]).astype(np.float64) if bias else None
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    assert_matches(y, reference.conv2d_forward(x64, w, b, (2, 1), (1, 2)), "y")
    assert_matches(dx, reference.conv2d_backward_input(dy64, w, x.shape, (2, 1), (1, 2)), "dx")
    assert_matches(layer.grads["weight"],
                   reference.conv2d_backward_weight(dy64, x64, w.shape, (2, 1), (1, 2)), "dW")
    if bias:
        assert_matches(layer.grads["bias"], dy64.sum(axis=(0, 2, 3)), "db")


def test_pytorch_default_initialisation():
    """kaiming_uniform(a=sqrt(5)) for the weight and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
    bias, fan_in = C_in kh kw, as torch.nn.Conv2d.reset_parameters."""
    cupycnn.use("numpy")
    cupycnn.manual_seed(0)
    layer = Conv2D(16, 32, (3, 5))
    bound = 1 / math.sqrt(16 * 3 * 5)
    w, b = layer.params["weight"], layer.params["bias"]
    assert w.shape == (32, 16, 3, 5) and w.dtype == np.float32 and b.shape == (32,)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert abs(float(w.mean())) < 0.05 * bound                 # centred: uniform, not one-sided
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.5 * bound


def test_same_seed_same_model_on_every_device():
    weights = []
    for name in ["numpy", "sim"] + (["cuda"] if cupycnn.cuda_available() else []):
        cupycnn.use(name)
        cupycnn.manual_seed(11)
        weights.append(cupycnn.asnumpy(Conv2D(3, 4, 3).params["weight"]))
    for w in weights[1:]:
        np.testing.assert_array_equal(w, weights[0])


def test_state_dict_names_and_round_trip():
    cupycnn.use("numpy")
    a, b = Conv2D(3, 4, 3), Conv2D(3, 4, 3)
    state = a.state_dict()
    assert list(state) == ["weight", "bias"]
    assert state["weight"].shape == (4, 3, 3, 3) and state["bias"].shape == (4,)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.params["weight"], a.params["weight"])
    assert list(Conv2D(3, 4, 3, bias=False).state_dict()) == ["weight"]
    with pytest.raises(ValueError, match=r"weight: shape \(4, 3, 3, 3\) in the state, "
                                         r"\(4, 3, 1, 1\) in the model"):
        Conv2D(3, 4, 1).load_state_dict(state)


def test_repr_as_pytorch_prints_conv2d():
    assert repr(Conv2D(3, 16, 3, padding=1)) == \
        "Conv2D(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(Conv2D(64, 128, 1, stride=2, bias=False)) == \
        "Conv2D(64, 128, kernel_size=(1, 1), stride=(2, 2), bias=False)"
    assert repr(Conv2D(2, 3, (3, 5), stride=(2, 1), padding=(0, 2))) == \
        "Conv2D(2, 3, kernel_size=(3, 5), stride=(2, 1), padding=(0, 2))"


def test_wrong_input_names_the_layer(rng):
    cupycnn.use("sim")
    layer = Conv2D(3, 16, 3, padding=1)
    with pytest.raises(ValueError, match=r"^Conv2D\(3, 16, kernel_size=\(3, 3\), stride=\(1, 1\), "
                                         r"padding=\(1, 1\)\): input must have shape "
                                         r"\(N, 3, H, W\), got \(8, 4, 32, 32\)$"):
        layer.forward(cupycnn.asarray(randn(rng, 8, 4, 32, 32)))
    with pytest.raises(ValueError, match=r"input must have shape \(N, 3, H, W\), got "
                                         r"\(3, 32, 32\)"):
        layer.forward(cupycnn.asarray(randn(rng, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"^Conv2D\(3, 2, kernel_size=\(5, 5\), stride=\(1, 1\)\): "
                                         r"the 5x5 kernel does not fit the input: input 4x6 padded "
                                         r"by \(0, 0\) gives an output of 0x2; expected at "
                                         r"least 1x1$"):
        Conv2D(3, 2, 5).forward(cupycnn.asarray(randn(rng, 1, 3, 4, 6)))
    layer.forward(cupycnn.asarray(randn(rng, 2, 3, 6, 6)))
    with pytest.raises(ValueError, match=r"Conv2D\(3, 16, .*\)\.backward: dy must have shape "
                                         r"\(2, 16, 6, 6\), got \(2, 16, 3, 3\)"):
        layer.backward(cupycnn.asarray(randn(rng, 2, 16, 3, 3)))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="Conv2D: kernel_size must be an int or a pair"):
        Conv2D(3, 4, (3, 3, 3))
    # The layer and the ops share one check and one message (ops.conv2d.check_hyper_parameters).
    with pytest.raises(ValueError, match=r"^Conv2D: in_channels, out_channels, kernel_size and "
                                         r"stride must be at least 1 and padding at least 0, got "
                                         r"in_channels=3, out_channels=4, kernel_size=\(3, 3\), "
                                         r"stride=\(0, 1\), padding=\(0, 0\)$"):
        Conv2D(3, 4, 3, stride=(0, 1))
    with pytest.raises(ValueError, match=r"^Conv2D: .* got in_channels=0, out_channels=4,"):
        Conv2D(0, 4, 3)


def test_backward_before_forward_is_an_error(rng):
    cupycnn.use("numpy")
    with pytest.raises(RuntimeError, match=r"Conv2D\(2, 2, kernel_size=\(1, 1\), stride=\(1, 1\)\)"
                                           r": backward called before forward"):
        Conv2D(2, 2, 1).backward(randn(rng, 1, 2, 3, 3))
