"""Each fusion against the composition of the unfused ops it replaces, on every device (numpy;
sim in natural, reversed and random thread order; cuda: a GPU, or the fake one of
tests/fake_cupy.py):

- batchnorm-apply + ReLU (+ residual add), forward, training and evaluation:
  batchnorm_normalize(x, ..., residual, relu) == relu_forward(add(batchnorm_normalize(x), r));
- its backward, the ReLU's mask folded into both batchnorm backward kernels and the residual's
  gradient written by the second: == relu_backward, then the two stages;
- the layers (BatchNorm2D(relu=True), forward_residual / backward_residual) and ResNet's stem
  and blocks (fused vs fused=False, BasicBlock and Bottleneck, with and without a projection):
  outputs, input gradients, every parameter gradient and the running statistics.

In float32 the fused kernel does the same roundings in the same order as the composition, so
the results are the same bits; the comparisons are exact.
"""
import collections
import contextlib

import numpy as np
import pytest

import cupycnn
from cupycnn import models
from cupycnn.layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, ReLU,
                            Sequential)
from cupycnn.models.resnet import BasicBlock, Bottleneck
from cupycnn.ops import batchnorm as bn
from cupycnn.ops import elementwise as ew
from helpers import DEVICES, randn, recorded_launches

SHAPES = [(2, 3, 5, 7), (4, 17, 3, 3), (3, 70, 1, 3), (5, 6), (2, 3, 48, 49)]


def _same(a, b, what):
    a, b = np.asarray(cupycnn.asnumpy(a)), np.asarray(cupycnn.asnumpy(b))
    assert a.shape == b.shape, what
    assert not np.isnan(a).any(), f"{what}: NaN (an element never written?)"
    np.testing.assert_array_equal(a, b, err_msg=what)


def _case(rng, shape):
    c = shape[1]
    x, r, dy = (cupycnn.asarray(randn(rng, *shape)) for _ in range(3))
    weight = cupycnn.asarray(rng.uniform(0.5, 1.5, c).astype(np.float32))
    bias = cupycnn.asarray(randn(rng, c))
    return x, r, dy, weight, bias


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_normalize_relu_add_is_the_composition(any_device, rng, shape, residual, training):
    x, r, _, weight, bias = _case(rng, shape)
    r = r if residual else None
    if training:
        sums = bn.batchnorm_stats(x)
        count = x.size // shape[1]
        fused, mean_f, invstd_f = bn.batchnorm_normalize(x, sums, count, weight, bias, 1e-5,
                                                         residual=r, relu=True)
        plain, mean_p, invstd_p = bn.batchnorm_normalize(x, sums, count, weight, bias, 1e-5)
    else:
        c = shape[1]
        running_mean = cupycnn.asarray(randn(rng, c))
        running_var = cupycnn.asarray(rng.uniform(0.5, 2.0, c).astype(np.float32))
        fused, mean_f, invstd_f = bn.batchnorm_normalize_running(
            x, running_mean, running_var, weight, bias, 1e-5, residual=r, relu=True)
        plain, mean_p, invstd_p = bn.batchnorm_normalize_running(
            x, running_mean, running_var, weight, bias, 1e-5)
    expected = ew.relu_forward(plain if r is None else ew.add(plain, r))
    _same(fused, expected, "y")
    _same(mean_f, mean_p, "mean")
    _same(invstd_f, invstd_p, "invstd")
    # Without the ReLU, the residual alone.
    if r is not None and training:
        added, _, _ = bn.batchnorm_normalize(x, sums, count, weight, bias, 1e-5, residual=r)
        _same(added, ew.add(plain, r), "y (residual, no ReLU)")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("batch_statistics", [True, False])
def test_backward_with_the_relu_mask_folded_in_is_the_composition(any_device, rng, shape,
                                                                  residual, batch_statistics):
    x, r, dy, weight, bias = _case(rng, shape)
    count = x.size // shape[1]
    sums = bn.batchnorm_stats(x)
    y, mean, invstd = bn.batchnorm_normalize(x, sums, count, weight, bias, 1e-5,
                                             residual=r if residual else None, relu=True)
    # Unfused: the ReLU's backward (its input is positive exactly where y is), then batchnorm's.
    g = ew.relu_backward(y, dy)
    plain_sums = bn.batchnorm_backward_reduce(x, g, mean, invstd)
    dx_p, dw_p, db_p = bn.batchnorm_backward_apply(x, g, weight, mean, invstd, plain_sums, count,
                                                   batch_statistics=batch_statistics)
    fused_sums = bn.batchnorm_backward_reduce(x, dy, mean, invstd, y=y)
    _same(fused_sums, plain_sums, "sums")
    dres = cupycnn.devices.empty(x.shape) if residual else None
    dx_f, dw_f, db_f = bn.batchnorm_backward_apply(x, dy, weight, mean, invstd, fused_sums, count,
                                                   batch_statistics=batch_statistics, y=y,
                                                   dresidual=dres)
    for got, want, name in ((dx_f, dx_p, "dx"), (dw_f, dw_p, "dweight"), (db_f, db_p, "dbias")):
        _same(got, want, name)
    if residual:
        _same(dres, g, "dresidual")


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("cls, shape", [(BatchNorm2D, (4, 6, 5, 5)), (BatchNorm1D, (8, 6))])
def test_fused_layer_is_batchnorm_add_relu(any_device, rng, cls, shape, residual):
    fused, bn_layer, relu = cls(shape[1], relu=True), cls(shape[1]), ReLU()
    x, r, dy, _, _ = _case(rng, shape)
    for training in (True, False):
        if residual:
            y_f = fused.forward_residual(x, r, training)
            y_p = relu.forward(ew.add(bn_layer.forward(x, training), r))
        else:
            y_f = fused.forward(x, training)
            y_p = relu.forward(bn_layer.forward(x, training))
        _same(y_f, y_p, f"y (training={training})")
        if residual:
            dx_f, dr_f = fused.backward_residual(dy)
            g = relu.backward(dy)
            dx_p = bn_layer.backward(g)
            _same(dr_f, g, "dresidual")
        else:
            dx_f = fused.backward(dy)
            dx_p = bn_layer.backward(relu.backward(dy))
        _same(dx_f, dx_p, "dx")
        for key in ("weight", "bias"):
            _same(fused.grads[key], bn_layer.grads[key], f"d{key}")
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            _same(fused.buffers[key], bn_layer.buffers[key], key)


def test_the_wrong_backward_is_a_clear_error(rng):
    cupycnn.use("numpy")
    layer = BatchNorm2D(3, relu=True)
    x, r, dy, _, _ = _case(rng, (2, 3, 4, 4))
    layer.forward_residual(x, r)
    with pytest.raises(RuntimeError, match="the forward took a residual .*backward_residual"):
        layer.backward(dy)
    layer.forward(x)
    with pytest.raises(RuntimeError, match="backward_residual follows forward_residual"):
        layer.backward_residual(dy)
    with pytest.raises(ValueError, match=r"residual must have shape \(2, 3, 4, 4\)"):
        layer.forward_residual(x, cupycnn.asarray(np.zeros((2, 3, 4, 3), np.float32)))


def _mini_resnet(fused):
    """ResNet's stem and both block kinds, with and without a projection, on few channels."""
    layers = [("conv1", Conv2D(3, 8, 3, padding=1, bias=False))]
    layers += [("bn1", BatchNorm2D(8, relu=True))] if fused else \
        [("bn1", BatchNorm2D(8)), ("relu", ReLU())]
    layers += [("b1", BasicBlock(8, 8, fused=fused)), ("b2", BasicBlock(8, 16, 2, fused=fused)),
               ("b3", Bottleneck(16, 4, fused=fused)), ("b4", Bottleneck(16, 8, 2, fused=fused)),
               ("pool", GlobalAvgPool2D()), ("fc", Dense(32, 10))]
    return Sequential(collections.OrderedDict(layers))


def _fused_and_plain(build, x, rng):
    """One training forward and backward of build(True) (fused) and build(False) from the same
    seed, x and dy: each run's logits, dx, parameter gradients and state."""
    runs = []
    for fused in (True, False):
        cupycnn.manual_seed(0)
        model = build(fused)
        y = model.forward(x, training=True)
        dy = runs[0]["dy"] if runs else cupycnn.asarray(randn(rng, *y.shape))
        dx = model.backward(dy)
        runs.append({"y": np.array(cupycnn.asnumpy(y)), "dx": np.array(cupycnn.asnumpy(dx)),
                     "dy": dy, "state": model.state_dict(),
                     "grads": {n: np.array(cupycnn.asnumpy(p.grad))
                               for n, p in model.named_parameters()}})
    fused, plain = runs
    _same(fused["y"], plain["y"], "logits")
    _same(fused["dx"], plain["dx"], "dx")
    assert list(fused["grads"]) == list(plain["grads"])
    for name in plain["grads"]:
        _same(fused["grads"][name], plain["grads"][name], f"grad {name}")
    return fused, plain


@pytest.mark.parametrize("device", DEVICES)
def test_fused_resnet_blocks_are_the_unfused_ones(rng, device):
    cupycnn.use(device)
    fused, plain = _fused_and_plain(_mini_resnet, cupycnn.asarray(randn(rng, 2, 3, 8, 8)), rng)
    for name in plain["state"]:
        _same(fused["state"][name], plain["state"][name], name)


def test_resnet_keeps_torchvision_names_fused_or_not():
    cupycnn.use("numpy")
    fused = models.resnet18(num_classes=10, stem="cifar")
    plain = models.resnet18(num_classes=10, stem="cifar", fused=False)
    assert fused.fused and list(fused.state_dict()) == list(plain.state_dict())
    layers = dict(fused._named_layers())
    assert layers["bn1."].relu and layers["layer1.0.bn1."].relu and layers["layer1.0.bn2."].relu
    assert not layers["layer2.0.downsample.1."].relu        # the projection's batchnorm: none
    assert "relu." not in layers and "relu." in dict(plain._named_layers())


@pytest.mark.parametrize("device", DEVICES)
def test_fused_simple_cnn_is_the_unfused_one(rng, device):
    """The digits network (BatchNorm2D and BatchNorm1D with their ReLUs fused, dropout)."""
    cupycnn.use(device)
    _fused_and_plain(lambda fused: models.simple_cnn(
        num_classes=10, in_channels=1, input_size=8, widths=(8, 16), block_dropout=(0.2, 0.3),
        hidden=16, fused=fused), cupycnn.asarray(randn(rng, 4, 1, 8, 8)), rng)


@pytest.mark.parametrize("version, precision", [("direct", "fp32"), ("tiled", "fp32"),
                                                ("tensor_core", "tf32"),
                                                ("tensor_core", "bf16")])
@pytest.mark.parametrize("shape, kernel, stride, padding", [((2, 5, 9, 7), 3, 1, 1),
                                                             ((3, 8, 8, 8), 1, 2, 0)], ids=str)
def test_conv_bias_residual_relu_epilogue_is_the_composition(any_device, rng, version, precision,
                                                            shape, kernel, stride, padding):
    """The inference epilogue in every conv2d forward kernel (direct, tiled FP32, tensor cores):
    conv + bias (+ residual) + ReLU in one pass == conv2d_forward, add, relu_forward."""
    from cupycnn.ops import conv2d as conv
    if any_device == "numpy" and version != "tiled":
        pytest.skip("the numpy device has one convolution (the reference)")
    out_channels = 6
    x = cupycnn.asarray(randn(rng, *shape))
    w = cupycnn.asarray(randn(rng, out_channels, shape[1], kernel, kernel) * 0.3)
    b = cupycnn.asarray(randn(rng, out_channels))
    kw = {} if any_device == "numpy" else {"version": version}
    with cupycnn.set_precision(precision):
        plain = conv.conv2d_forward(x, w, b, stride, padding, **kw)
        r = cupycnn.asarray(randn(rng, *plain.shape))
        _same(conv.conv2d_forward(x, w, b, stride, padding, residual=r, relu=True, **kw),
              ew.relu_forward(ew.add(plain, r)), "conv + bias + residual + relu")
        _same(conv.conv2d_forward(x, w, None, stride, padding, relu=True, **kw),
              ew.relu_forward(conv.conv2d_forward(x, w, None, stride, padding, **kw)),
              "conv + relu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False])
def test_folded_inference_is_the_evaluation_forward_with_fewer_launches(rng, device, fused):
    """models.fold_batchnorm: each conv + batchnorm (+ shortcut) + ReLU one convolution with its
    epilogue; the same logits as the model's evaluation forward, to float32 rounding."""
    cupycnn.use(device)
    cupycnn.manual_seed(0)
    model = models.resnet18(num_classes=10, stem="cifar", width=4, fused=fused)
    for layer in model.layers():                       # statistics that are not the defaults
        if isinstance(layer, BatchNorm2D):
            c = layer.num_features
            layer.buffers["running_mean"][...] = cupycnn.asarray(randn(rng, c) * 0.1)
            layer.buffers["running_var"][...] = cupycnn.asarray(
                rng.uniform(0.5, 2.0, c).astype(np.float32))
            layer.params["bias"][...] = cupycnn.asarray(randn(rng, c) * 0.1)
    x = cupycnn.asarray(randn(rng, 2, 3, 8, 8))
    served = models.fold_batchnorm(model)
    launches = {}
    outputs = {}
    for name, net in (("model", model), ("folded", served)):
        with recorded_launches() as log:
            outputs[name] = np.asarray(cupycnn.asnumpy(net.forward(x, training=False)))
        launches[name] = len(log)
    err = np.abs(outputs["folded"] - outputs["model"]).max() / np.abs(outputs["model"]).max()
    assert err < 1e-5, err
    assert list(served.state_dict())[:2] == ["conv1.weight", "conv1.bias"]
    if device == "sim":                  # 20 batchnorms (and the unfused ReLUs, adds) are gone
        assert launches["folded"] <= launches["model"] - 20, launches
    with pytest.raises(RuntimeError, match="a folded model is for inference"):
        served.forward(x, training=True)


# ------------------------------------------------ batchnorm statistics in the conv's epilogue
# (ops/conv2d_stats.py). Shapes: pixels over several blocks of both tiles and channels over
# more than one row of blocks (70 > 64), odd sizes, a stride; the large tile forced once.

STAT_CASES = [((3, 5, 9, 7), 70, 3, 1, 1), ((2, 8, 12, 12), 6, 1, 2, 0), ((1, 3, 5, 5), 4, 3, 1, 0)]


def _stat_inputs(rng, shape, out_channels, kernel, storage):
    from cupycnn.ops import _storage
    x = cupycnn.asarray(randn(rng, *shape) + 0.5)          # a mean to keep: sum y^2 >> (sum y)^2/n
    if storage == "bf16":
        x = _storage.to_bf16(x)
    w = cupycnn.asarray(randn(rng, out_channels, shape[1], kernel, kernel) * 0.3)
    b = cupycnn.asarray(randn(rng, out_channels))
    return x, w, b


def _close_sums(got, want, y, what):
    """Sums of the same values added in another order: equal to the double rounding of the
    additions (relative 1e-16 each), held to 1e-13 of the sum of |terms|."""
    from cupycnn.ops._storage import decode
    got, want = np.asarray(cupycnn.asnumpy(got)), np.asarray(cupycnn.asnumpy(want))
    assert got.dtype == want.dtype == np.float64 and got.shape == want.shape, what
    v = decode(np.asarray(cupycnn.asnumpy(y))).astype(np.float64)
    v = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)
    scale = np.stack([np.abs(v).sum(1), (v * v).sum(1)], 1)
    assert np.all(np.abs(got - want) <= 1e-13 * scale + 1e-300), what


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("storage", ["float32", "bf16"])
@pytest.mark.parametrize("shape, out_channels, kernel, stride, padding", STAT_CASES, ids=str)
def test_convolution_statistics_are_the_batchnorm_stats_of_its_output(
        any_device, rng, precision, storage, shape, out_channels, kernel, stride, padding):
    """conv2d_forward_statistics: y is conv2d_forward's, bit for bit, and the sums are
    batchnorm_stats(y): the same bits where it is that composition (numpy; BF16 storage at
    fp32, on float32 copies), the same sums in another order of additions from the epilogues
    (tensor-core kernels at tf32 and bf16, the tiled FP32 kernel at fp32)."""
    from cupycnn.ops import conv2d as conv
    from cupycnn.ops.conv2d_stats import conv2d_forward_statistics
    x, w, b = _stat_inputs(rng, shape, out_channels, kernel, storage)
    with cupycnn.set_precision(precision):
        for bias in (None, b):
            y, sums = conv2d_forward_statistics(x, w, bias, stride, padding)
            y_plain = conv.conv2d_forward(x, w, bias, stride, padding)
            _same(y, y_plain, "y")
            want = bn.batchnorm_stats(y_plain)
            if any_device == "numpy" or (precision == "fp32" and storage == "bf16"):
                _same(sums, want, "sums (the composition itself)")
            else:
                _close_sums(sums, want, y_plain, "sums")


@pytest.mark.parametrize("precision, storage", [("fp32", "float32"), ("tf32", "float32"),
                                                ("tf32", "bf16"), ("bf16", "float32"),
                                                ("bf16", "bf16")])
def test_convolution_statistics_do_not_depend_on_the_block_order(rng, precision, storage):
    """Per-block partial sums in a fixed order, combined in a fixed order: the same bits under
    the emulator's natural, reversed and random block and thread orders, for both tensor-core
    tiles and the tiled FP32 kernel."""
    from cupycnn import sim
    from cupycnn.ops import tiles
    from cupycnn.ops.conv2d_stats import conv2d_forward_statistics
    cupycnn.use("sim")
    x, w, _ = _stat_inputs(rng, (3, 5, 9, 7), 70, 3, storage)
    with cupycnn.set_precision(precision):
        for tile in (tiles.TILES if precision != "fp32" else (None,)):
            runs = []
            with tiles.use_tile(tile) if tile else contextlib.nullcontext():
                for order in ("natural", "reversed", "random"):
                    sim.set_thread_order(order, seed=11)
                    y, sums = conv2d_forward_statistics(x, w, None, 1, 1)
                    runs.append((np.array(cupycnn.asnumpy(y)), np.array(cupycnn.asnumpy(sums))))
            for order, (y, sums) in zip(("reversed", "random"), runs[1:]):
                where = tile.name if tile else "tiled"
                np.testing.assert_array_equal(y, runs[0][0], err_msg=f"{where} y {order}")
                np.testing.assert_array_equal(sums, runs[0][1], err_msg=f"{where} sums {order}")


def _launches(run):
    with recorded_launches() as names:
        result = run()
    return result, names


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_conv_feeding_a_batchnorm_skips_its_reduction(rng, device, precision):
    """Conv2D.feed_statistics_to(bn): the training forward of conv then bn is the unlinked
    composition's (y, the running statistics, the backward: the same bits on numpy, where the
    sums are batchnorm_stats'; within float rounding of the normalised values from the
    epilogues), and on sim bn launches no batchnorm_stats: that read of y is gone. Evaluation
    uses the running statistics; an input that is not the conv's output (a copy of it) gets the
    batchnorm's own reduction."""
    from cupycnn.ops import _storage
    cupycnn.use(device)
    x = cupycnn.asarray(randn(rng, 4, 3, 9, 9) + 0.5)
    if precision == "bf16":
        x = _storage.to_bf16(x)
    runs = {}
    with cupycnn.set_precision(precision):
        for linked in (True, False):
            cupycnn.manual_seed(0)
            conv, norm = Conv2D(3, 70, 3, padding=1, bias=False), BatchNorm2D(70, relu=True)
            if linked:
                conv.feed_statistics_to(norm)
            model = Sequential(conv, norm)
            y, names = _launches(lambda: model.forward(x, training=True))
            dx = model.backward(_storage.as_activation(cupycnn.asarray(randn(
                np.random.default_rng(1), *y.shape))))
            runs[linked] = [np.asarray(_storage.decode(np.array(cupycnn.asnumpy(a))),
                                       np.float32)
                            for a in (y, dx, conv.grads["weight"], norm.grads["weight"],
                                      norm.buffers["running_mean"], norm.buffers["running_var"])]
            stats_kernels = [k for k in names if k.startswith("batchnorm_stats")]
            if device == "sim":
                folded = "conv2d_forward_stats" if precision == "fp32" else \
                    "conv2d_tc_forward_stats"
                assert bool(stats_kernels) != linked, (linked, names)
                assert any(k.startswith(folded) for k in names) == linked, names
    exact = device == "numpy"
    for what, a, b in zip(("y", "dx", "dW", "dgamma", "running_mean", "running_var"),
                          runs[True], runs[False]):
        if exact:
            _same(a, b, what)
        else:
            tol = 1e-2 if precision == "bf16" and what in ("y", "dx") else 1e-5
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=what)
    with cupycnn.set_precision(precision):
        cupycnn.manual_seed(0)
        conv, norm = Conv2D(3, 70, 3, padding=1, bias=False), BatchNorm2D(70)
        conv.feed_statistics_to(norm)
        model = Sequential(conv, norm)
        _, names = _launches(lambda: model.forward(x, training=False))
        assert not any(k.startswith("batchnorm_stats") for k in names)       # running stats
        assert not any("forward_stats" in k for k in names)
        y = conv(x, training=True)
        assert norm._received is not None and norm._received[0] is y
        other = cupycnn.asarray(np.array(cupycnn.asnumpy(y)))           # not the conv's array
        _, names = _launches(lambda: norm.forward(other, training=True))
        if device == "sim":
            assert any(k.startswith("batchnorm_stats") for k in names), names
        assert norm._received is None                                   # used (or dropped) once


def test_feed_statistics_to_takes_a_matching_batchnorm():
    cupycnn.use("numpy")
    conv = Conv2D(3, 8, 3, bias=False)
    for wrong in (BatchNorm2D(4), BatchNorm1D(8), Dense(2, 2)):
        with pytest.raises(ValueError, match="feed_statistics_to takes a BatchNorm2D of 8 "
                                             "features"):
            conv.feed_statistics_to(wrong)
    bn2 = BatchNorm2D(8)
    assert conv.feed_statistics_to(bn2) is conv and conv.statistics_for is bn2
    assert list(conv.named_children()) == [] and len(list(conv.parameters())) == 1


def test_the_fused_resnet_feeds_every_batchnorm_from_its_convolution():
    cupycnn.use("numpy")
    fused = models.resnet18(num_classes=10, stem="cifar")
    plain = models.resnet18(num_classes=10, stem="cifar", fused=False)
    layers = dict(fused._named_layers())
    convs = {name: layer for name, layer in layers.items() if isinstance(layer, Conv2D)}
    assert len(convs) == 20                 # the stem, 16 in the blocks, 3 projections
    for name, conv in convs.items():
        bn_name = name.replace("conv", "bn") if "downsample" not in name else \
            name.replace("downsample.0.", "downsample.1.")
        assert conv.statistics_for is layers[bn_name], name
    assert all(layer.statistics_for is None for _, layer in plain._named_layers()
               if isinstance(layer, Conv2D))
