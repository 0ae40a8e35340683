"""BF16 storage (ops/_storage.py): every kernel of the step on BF16 activations is, bit for bit,
its float32 version on the decoded values with the result rounded to BF16 once, on numpy and
on sim in natural, reversed and random thread order (and on cuda: a GPU, or the fake one of
tests/fake_cupy.py). Per-channel statistics, parameter gradients and the loss stay float32 and
must equal the float32 version's exactly.

The float32 path is itself checked against the float64 reference by the kernel tests; what these
tests add is that the BF16 variants are the same template over another storage type: FP32
arithmetic inside, one rounding at the store.
"""
import numpy as np
import pytest

import cupycnn
from cupycnn.ops import _storage
from cupycnn.ops import elementwise as ew
from cupycnn.reference import rounding
from helpers import randn, recorded_launches

BF16 = _storage.BF16


def bf16_pair(host):
    """(the BF16 device array, the float32 device array of its exact values)."""
    bits = rounding.bf16_bits(host)
    return cupycnn.asarray(bits), cupycnn.asarray(rounding.bf16_to_float32(bits))


def assert_bf16_of(got, expected_f32, what):
    """got (BF16) must be expected_f32 (float32, computed from the same values) rounded."""
    got = np.asarray(cupycnn.asnumpy(got))
    assert got.dtype == BF16, f"{what}: stored as {got.dtype}, not BF16"
    want = rounding.bf16_bits(np.asarray(cupycnn.asnumpy(expected_f32)))
    np.testing.assert_array_equal(got, want, err_msg=what)


def assert_same(got, want, what):
    got, want = np.asarray(cupycnn.asnumpy(got)), np.asarray(cupycnn.asnumpy(want))
    assert got.dtype == want.dtype, f"{what}: {got.dtype} vs {want.dtype}"
    np.testing.assert_array_equal(got, want, err_msg=what)


SHAPES = [(3, 5, 7), (2, 17, 4, 4), (1,), (1000,)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_casts_round_to_nearest_even_and_back_exactly(any_device, rng, shape):
    x = randn(rng, *shape) * 100
    x.flat[0] = np.float32(1.0 + 2.0 ** -8)              # a tie: even (1.0)
    if x.size > 2:
        x.flat[1], x.flat[2] = np.inf, np.nan
    b = _storage.to_bf16(cupycnn.asarray(x))
    np.testing.assert_array_equal(cupycnn.asnumpy(b), rounding.bf16_bits(x))
    back = _storage.to_float32(b)
    np.testing.assert_array_equal(cupycnn.asnumpy(back), rounding.round_bf16(x))
    assert _storage.to_bf16(b) is b


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_elementwise(any_device, rng, shape):
    (xb, xf), (yb, yf), (db, df) = (bf16_pair(randn(rng, *shape)) for _ in range(3))
    assert_bf16_of(ew.relu_forward(xb), ew.relu_forward(xf), "relu_forward")
    assert_bf16_of(ew.relu_backward(xb, db), ew.relu_backward(xf, df), "relu_backward")
    assert_bf16_of(ew.add(xb, yb), ew.add(xf, yf), "add")


def test_storages_do_not_mix(rng):
    cupycnn.use("sim")
    xb, xf = bf16_pair(randn(rng, 4, 4))
    with pytest.raises(ValueError, match="add: b is float32 but a is uint16"):
        ew.add(xb, xf)


POOL_CASES = [((2, 3, 7, 9), 3, 2, 1), ((1, 4, 8, 8), 2, 2, 0), ((2, 2, 5, 5), 3, 1, 1)]


@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CASES, ids=str)
def test_pooling(any_device, rng, shape, kernel, stride, padding):
    from cupycnn.ops import pool
    xb, xf = bf16_pair(randn(rng, *shape))
    yb, argb = pool.max_pool2d_forward(xb, kernel, stride, padding)
    yf, argf = pool.max_pool2d_forward(xf, kernel, stride, padding)
    assert_bf16_of(yb, yf, "max_pool2d_forward")
    assert_same(argb, argf, "argmax")
    db, df = bf16_pair(randn(rng, *yf.shape))
    size = shape[2:]
    assert_bf16_of(pool.max_pool2d_backward(db, argb, size, kernel, stride, padding),
                   pool.max_pool2d_backward(df, argf, size, kernel, stride, padding),
                   "max_pool2d_backward")
    assert_bf16_of(pool.avg_pool2d_forward(xb, kernel, stride, padding),
                   pool.avg_pool2d_forward(xf, kernel, stride, padding), "avg_pool2d_forward")
    assert_bf16_of(pool.avg_pool2d_backward(db, size, kernel, stride, padding),
                   pool.avg_pool2d_backward(df, size, kernel, stride, padding),
                   "avg_pool2d_backward")
    assert_bf16_of(pool.global_avg_pool2d_forward(xb), pool.global_avg_pool2d_forward(xf),
                   "global_avg_pool2d_forward")
    gb, gf = bf16_pair(randn(rng, *shape[:2]))
    assert_bf16_of(pool.global_avg_pool2d_backward(gb, size),
                   pool.global_avg_pool2d_backward(gf, size), "global_avg_pool2d_backward")


@pytest.mark.parametrize("shape", [(4, 33), (2, 3, 5, 5)], ids=str)
def test_dropout(any_device, rng, shape):
    from cupycnn.ops import dropout
    xb, xf = bf16_pair(randn(rng, *shape))
    for p in (0.3, 0.0, 1.0):
        assert_bf16_of(dropout.dropout_forward(xb, p, 7, 3), dropout.dropout_forward(xf, p, 7, 3),
                       f"dropout_forward p={p}")
        assert_bf16_of(dropout.dropout_backward(xb, p, 7, 3),
                       dropout.dropout_backward(xf, p, 7, 3), f"dropout_backward p={p}")


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (8, 6), (3, 70, 1, 3)], ids=str)
@pytest.mark.parametrize("residual", [False, True])
def test_batchnorm_every_stage(any_device, rng, shape, residual):
    from cupycnn.ops import batchnorm as bn
    c = shape[1]
    (xb, xf), (rb, rf), (db, df) = (bf16_pair(randn(rng, *shape)) for _ in range(3))
    weight = cupycnn.asarray(rng.uniform(0.5, 1.5, c).astype(np.float32))
    bias = cupycnn.asarray(randn(rng, c))
    count = int(np.prod(shape)) // c
    sums_b, sums_f = bn.batchnorm_stats(xb), bn.batchnorm_stats(xf)
    assert_same(sums_b, sums_f, "stats (float64)")
    r_b, r_f = (rb, rf) if residual else (None, None)
    yb, mean_b, invstd_b = bn.batchnorm_normalize(xb, sums_b, count, weight, bias, 1e-5,
                                                  residual=r_b, relu=True)
    yf, mean_f, invstd_f = bn.batchnorm_normalize(xf, sums_f, count, weight, bias, 1e-5,
                                                  residual=r_f, relu=True)
    assert_bf16_of(yb, yf, "normalize")
    assert_same(mean_b, mean_f, "mean")
    assert_same(invstd_b, invstd_f, "invstd")
    running = (cupycnn.asarray(randn(rng, c)),
               cupycnn.asarray(rng.uniform(0.5, 2, c).astype(np.float32)))
    assert_bf16_of(bn.batchnorm_normalize_running(xb, *running, weight, bias, 1e-5,
                                                  residual=r_b)[0],
                   bn.batchnorm_normalize_running(xf, *running, weight, bias, 1e-5,
                                                  residual=r_f)[0], "normalize_running")
    # The backward of the fused forward: y's decoded values are the float path's y rounded, so
    # the float path runs on those values.
    y_vals = _storage.to_float32(yb)
    gb = bn.batchnorm_backward_reduce(xb, db, mean_b, invstd_b, y=yb)
    gf = bn.batchnorm_backward_reduce(xf, df, mean_f, invstd_f, y=y_vals)
    assert_same(gb, gf, "backward_reduce (float64)")
    for batch_statistics in (True, False):
        dres_b = cupycnn.devices.empty(shape, BF16) if residual else None
        dres_f = cupycnn.devices.empty(shape, np.float32) if residual else None
        dxb, dwb, dbb = bn.batchnorm_backward_apply(xb, db, weight, mean_b, invstd_b, gb, count,
                                                    batch_statistics, y=yb, dresidual=dres_b)
        dxf, dwf, dbf = bn.batchnorm_backward_apply(xf, df, weight, mean_f, invstd_f, gf, count,
                                                    batch_statistics, y=y_vals,
                                                    dresidual=dres_f)
        assert_bf16_of(dxb, dxf, f"backward_apply dx ({batch_statistics})")
        assert_same(dwb, dwf, "dweight (float32)")
        assert_same(dbb, dbf, "dbias (float32)")
        if residual:
            assert_bf16_of(dres_b, dres_f, "dresidual")


@pytest.mark.parametrize("rows, classes", [(5, 10), (33, 3), (4, 100)])
def test_softmax_xent_and_metrics_read_bf16_logits_and_stay_float(any_device, rng, rows,
                                                                   classes):
    from cupycnn.losses import SoftmaxCrossEntropy
    from cupycnn.ops import metrics
    zb, zf = bf16_pair(randn(rng, rows, classes) * 3)
    labels = cupycnn.asarray(rng.integers(0, classes, rows).astype(np.int32))
    losses = []
    for z in (zb, zf):
        loss_fn = SoftmaxCrossEntropy(label_smoothing=0.1)
        loss = loss_fn.forward(z, labels)
        losses.append((loss, loss_fn.backward()))
    (loss_b, dz_b), (loss_f, dz_f) = losses
    assert_same(loss_b, loss_f, "loss (float32)")
    assert_bf16_of(dz_b, dz_f, "dlogits")
    sums_b, sums_f = metrics.new_sums(), metrics.new_sums()
    metrics.accumulate_metrics(zb, labels, loss_b, sums_b)
    metrics.accumulate_metrics(zf, labels, loss_f, sums_f)
    assert_same(sums_b, sums_f, "metric sums")


@pytest.mark.parametrize("name", ["normalize", "random_crop_flip", "affine_warp"])
def test_the_augmentations_write_bf16(any_device, rng, name):
    from cupycnn.ops import augment
    images = cupycnn.asarray(rng.integers(0, 256, (3, 9, 7, 3)).astype(np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    kwargs = {}
    if name == "random_crop_flip":
        kwargs = dict(padding=2, seed=5, stream=1)
    elif name == "affine_warp":
        kwargs = dict(ranges=augment.AffineRanges(rotation=(-10, 10), zoom_x=(0.9, 1.1),
                                                  flip_probability=0.5), seed=5, stream=1)
    fn = getattr(augment, name)
    assert_bf16_of(fn(images, mean, std, dtype=BF16, **kwargs),
                   fn(images, mean, std, dtype=np.float32, **kwargs), name)


@pytest.mark.parametrize("precision", ["bf16", "tf32", "fp32"])
@pytest.mark.parametrize("shape, kernel, stride, padding", [((2, 5, 9, 7), 3, 1, 1),
                                                             ((3, 8, 8, 8), 1, 2, 0)], ids=str)
def test_convolution_reads_and_writes_bf16(any_device, rng, precision, shape, kernel, stride,
                                          padding):
    """The three convolution products on BF16 activations: the tensor-core kernels' _bf16 entry
    points at bf16 and tf32 (the activation operands through registers, the weight by
    cp.async), the tiled kernels on float32 copies at fp32; y and dx rounded once, the weight
    gradient (split, then reduced) and the bias gradient float32 and exact."""
    from cupycnn.ops import conv2d as conv
    from cupycnn.ops import reduce
    out_channels = 6
    xb, xf = bf16_pair(randn(rng, *shape))
    w = cupycnn.asarray(randn(rng, out_channels, shape[1], kernel, kernel) * 0.3)
    b = cupycnn.asarray(randn(rng, out_channels))
    with cupycnn.set_precision(precision):
        yf = conv.conv2d_forward(xf, w, b, stride, padding)
        assert_bf16_of(conv.conv2d_forward(xb, w, b, stride, padding), yf, "forward")
        rb, rf = bf16_pair(randn(rng, *yf.shape))
        assert_bf16_of(conv.conv2d_forward(xb, w, b, stride, padding, residual=rb, relu=True),
                       conv.conv2d_forward(xf, w, b, stride, padding, residual=rf, relu=True),
                       "forward + residual + relu")
        db, df = bf16_pair(randn(rng, *yf.shape))
        assert_bf16_of(conv.conv2d_backward_input(db, w, shape, stride, padding),
                       conv.conv2d_backward_input(df, w, shape, stride, padding), "dx")
        for splits in (None, 2):
            assert_same(conv.conv2d_backward_weight(db, xb, w.shape, stride, padding,
                                                    splits=splits),
                        conv.conv2d_backward_weight(df, xf, w.shape, stride, padding,
                                                    splits=splits), f"dw (splits {splits})")
        assert_same(reduce.channel_sum(db), reduce.channel_sum(df), "bias gradient")
        with pytest.raises(ValueError, match="conv2d_forward: weight must be float32"):
            conv.conv2d_forward(xb, _storage.to_bf16(w), b, stride, padding)


# Awkward shapes: M, N, K off every tile multiple, K odd (no 16-byte copies), one output
# column, and more than one block along N.
GEMM_SHAPES = [(37, 70, 45), (5, 1, 17), (66, 9, 32)]


@pytest.mark.parametrize("precision", ["bf16", "tf32", "fp32"])
@pytest.mark.parametrize("M, N, K", GEMM_SHAPES, ids=str)
def test_dense_products_read_and_write_bf16(any_device, rng, precision, M, N, K):
    """The dense layer's three products on BF16 activations: the tensor-core kernels' _bf16
    entry points at bf16 and tf32 (the activation operands through registers, the weight by
    cp.async), the tiled kernels on float32 copies at fp32. y = x W^T + b and dx = dy W are
    the float32 products on the decoded values rounded once; dW = dy^T x is float32 and equal
    to the float32 product's bit for bit; alpha, beta (reading a BF16 out) and a batch too."""
    from cupycnn.ops.gemm import gemm
    xb, xf = bf16_pair(randn(rng, M, K))
    w = cupycnn.asarray(randn(rng, N, K) * 0.3)
    b = cupycnn.asarray(randn(rng, N))
    db, df = bf16_pair(randn(rng, M, N))
    with cupycnn.set_precision(precision):
        assert_bf16_of(gemm(xb, w, transpose_b=True, bias=b),
                       gemm(xf, w, transpose_b=True, bias=b), "y = x W^T + b")
        assert_bf16_of(gemm(db, w), gemm(df, w), "dx = dy W")
        assert_same(gemm(db, xb, transpose_a=True), gemm(df, xf, transpose_a=True),
                    "dW = dy^T x")
        grad = cupycnn.asarray(randn(rng, N, K))           # accumulated into, as beta=1 does
        want = cupycnn.asarray(cupycnn.asnumpy(grad))
        gemm(db, xb, transpose_a=True, beta=1.0, out=grad)
        gemm(df, xf, transpose_a=True, beta=1.0, out=want)
        assert_same(grad, want, "dW += dy^T x")
        ob, of = bf16_pair(randn(rng, M, N))
        got = gemm(xb, w, transpose_b=True, alpha=0.5, beta=-1.5, out=ob, bias=b)
        assert got is ob
        assert_bf16_of(ob, gemm(xf, w, transpose_b=True, alpha=0.5, beta=-1.5, out=of, bias=b),
                       "alpha x W^T + b + beta out (out BF16)")
        batch_b, batch_f = bf16_pair(randn(rng, 3, M, N))
        assert_bf16_of(gemm(batch_b, w), gemm(batch_f, w), "batched dy W")


def test_dense_products_refuse_other_storage_mixes(any_device, rng):
    from cupycnn.ops.gemm import gemm
    xb, _ = bf16_pair(randn(rng, 4, 3))
    w = cupycnn.asarray(randn(rng, 5, 3))
    with cupycnn.set_precision("bf16"):
        for call, got in [(lambda: gemm(xb, _storage.to_bf16(w), transpose_b=True),
                           "a bf16, b bf16"),
                          (lambda: gemm(w, xb, transpose_b=True), "a float32, b bf16"),
                          (lambda: gemm(xb, w, transpose_a=True), "a bf16, b float32"),
                          (lambda: gemm(xb, xb, transpose_a=True,
                                        out=_storage.to_bf16(cupycnn.asarray(
                                            np.zeros((3, 3), np.float32)))),
                           "a bf16, b bf16, out bf16")]:
            with pytest.raises(ValueError, match=f"gemm: on BF16 storage .* got {got} "):
                call()
        with pytest.raises(ValueError, match="gemm: bias must be float32"):
            gemm(xb, w, transpose_b=True, bias=_storage.to_bf16(cupycnn.asarray(
                randn(rng, 5))))


def test_layers_keep_their_input_storage(rng):
    """Conv2D and Dense give BF16 back for a BF16 input; their parameter gradients are
    float32."""
    from cupycnn.layers import Conv2D, Dense
    cupycnn.use("sim")
    for layer, shape in ((Conv2D(3, 4, 3, padding=1), (2, 3, 5, 5)), (Dense(6, 4), (3, 6))):
        xb, xf = bf16_pair(randn(rng, *shape))
        yb, yf = layer.forward(xb), None
        saved_grads = {}
        db, df = bf16_pair(randn(rng, *yb.shape))
        dxb = layer.backward(db)
        saved_grads = {k: np.array(cupycnn.asnumpy(g)) for k, g in layer.grads.items()}
        yf = layer.forward(xf)
        dxf = layer.backward(df)
        assert_bf16_of(yb, yf, f"{layer!r} forward")
        assert_bf16_of(dxb, dxf, f"{layer!r} backward")
        for k, g in layer.grads.items():
            assert g.dtype == np.float32
            np.testing.assert_array_equal(saved_grads[k], cupycnn.asnumpy(g), err_msg=k)


def _mini_net():
    from cupycnn.layers import (BatchNorm2D, Conv2D, Dense, Dropout, GlobalAvgPool2D,
                                MaxPool2D, Sequential)
    from cupycnn.models.resnet import BasicBlock
    return Sequential(Conv2D(3, 8, 3, padding=1, bias=False), BatchNorm2D(8, relu=True),
                      MaxPool2D(2), BasicBlock(8, 16, stride=2), GlobalAvgPool2D(),
                      Dropout(0.25), Dense(16, 5))


def _step(device, storage, x, dy):
    cupycnn.use(device)
    cupycnn.manual_seed(0)
    model = _mini_net()
    xi, dyi = cupycnn.asarray(x), cupycnn.asarray(dy)
    if storage == "bf16":
        xi, dyi = _storage.to_bf16(xi), _storage.to_bf16(dyi)
    y = model.forward(xi)
    dx = model.backward(dyi)
    assert y.dtype == xi.dtype and dx.dtype == xi.dtype
    grads = [np.array(cupycnn.asnumpy(p.grad)) for p in model.parameters()]
    assert all(g.dtype == np.float32 for g in grads)
    return [_storage.decode(np.array(cupycnn.asnumpy(a))) for a in (y, dx)] + grads


def test_a_network_on_bf16_storage_agrees_across_devices_and_with_float32(rng):
    """The whole forward and backward of a small ResNet-like network on BF16 activations: sim and
    numpy agree (to a BF16 rounding flipped by float32 summation order now and then), and both
    stay within BF16's precision of the float32 network."""
    x, dy = randn(rng, 4, 3, 8, 8), randn(rng, 4, 5)
    runs = {(d, s): _step(d, s, x, dy) for d in ("numpy", "sim") for s in ("fp32", "bf16")}

    def rel(a, b):
        return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)

    for k, (a, b) in enumerate(zip(runs[("sim", "bf16")], runs[("numpy", "bf16")])):
        assert rel(a, b) < 2e-2, f"output {k}: sim and numpy differ by {rel(a, b):.3g}"
    logits_error = rel(runs[("sim", "bf16")][0], runs[("sim", "fp32")][0])
    assert 1e-4 < logits_error < 5e-2, logits_error        # rounded, and not by much


def test_bf16_storage_halves_the_step_memory(rng):
    """The memory plan of a training step on BF16 activations (precision bf16: the tensor-core
    convolutions read and write BF16) against float32 (precision fp32): the arena (every
    activation, gradient and workspace) is about half (what stays float32: statistics, the
    weight-gradient partials)."""
    from cupycnn import optim, plan
    from cupycnn.losses import SoftmaxCrossEntropy
    cupycnn.use("sim")
    arenas = {}
    for storage in ("fp32", "bf16"):
        cupycnn.manual_seed(0)
        model = _mini_net()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = SoftmaxCrossEntropy()
        x = cupycnn.asarray(randn(rng, 32, 3, 16, 16))
        if storage == "bf16":
            x = _storage.to_bf16(x)
        y = cupycnn.asarray(rng.integers(0, 5, 32).astype(np.int32))

        def body():
            model.backward(loss.backward() if loss.forward(model.forward(x), y) is not None
                           else None)
            opt.launch_step()

        opt.prepare_step()
        with cupycnn.sim.dry_run(), cupycnn.set_precision(storage):
            _, p = plan.trace(body)
        arenas[storage] = p.arena_bytes
    assert arenas["bf16"] < 0.55 * arenas["fp32"], arenas


def test_a_bf16_step_converts_no_activation(rng):
    """Precision bf16: a training step of the small ResNet-like network on BF16 activations runs
    its convolutions and its dense layer on BF16 (conv2d_tc_*_bf16, gemm_tc_*_bf16): not one
    float32 copy of an activation or a gradient (no cast_* launch), forward or backward."""
    from cupycnn.losses import SoftmaxCrossEntropy
    cupycnn.use("sim")
    cupycnn.manual_seed(0)
    model, loss = _mini_net(), SoftmaxCrossEntropy()
    x = _storage.to_bf16(cupycnn.asarray(randn(rng, 4, 3, 8, 8)))
    y = cupycnn.asarray(rng.integers(0, 5, 4).astype(np.int32))
    with cupycnn.set_precision("bf16"), cupycnn.sim.dry_run(), recorded_launches() as launches:
        loss.forward(model.forward(x, training=True), y)
        model.backward(loss.backward())
    casts = [k for k in launches if k.startswith("cast_")]
    assert casts == [], casts
    gemms = [k for k in launches if k.startswith("gemm")]
    assert gemms == ["gemm_tc_nt_bf16", "gemm_tc_tn_bf16", "gemm_tc_nn_bf16"], gemms
    convs = [k for k in launches if k.startswith("conv2d")]
    assert convs and all(k.endswith("_bf16") or k == "conv2d_backward_weight_reduce"
                         for k in convs), convs
