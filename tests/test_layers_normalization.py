"""BatchNorm1D, BatchNorm2D and GroupNorm as layers: against textbook float64 transcriptions of
PyTorch's definitions (two-pass mean and variance, not the library's references), training and
evaluation, running statistics over several steps, the stats_reducer hook as a simulated
all-reduce, state_dict names and dtypes, and the errors PyTorch raises."""
import numpy as np
import pytest

import cupycnn
from cupycnn.layers import BatchNorm1D, BatchNorm2D, GroupNorm
from cupycnn.ops import batchnorm as bn_ops
from helpers import assert_matches, randn

EPS = 1e-5


def _randomise(layer, rng, channels):
    w = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    b = randn(rng, channels)
    layer.params["weight"][...] = cupycnn.asarray(w)
    layer.params["bias"][...] = cupycnn.asarray(b)
    return w.astype(np.float64), b.astype(np.float64)


def _textbook_batchnorm(x, dy, w, b, mean=None, var=None):
    """y, dx, dweight, dbias of y = (x - mean) / sqrt(var + eps) * w + b per channel; with
    mean and var given (evaluation) they are constants, else the batch's (biased var) and the
    gradient flows through them (the standard three-term formula)."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    frozen = mean is not None
    if not frozen:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    invstd = 1 / np.sqrt(var + EPS)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    y = xhat * w.reshape(shape) + b.reshape(shape)
    dxhat = dy * w.reshape(shape)
    if frozen:
        dx = dxhat * invstd.reshape(shape)
    else:
        dx = invstd.reshape(shape) * (dxhat - dxhat.mean(axis=axes).reshape(shape)
                                      - xhat * (dxhat * xhat).mean(axis=axes).reshape(shape))
    return y, dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


def _run(layer, x, dy, training):
    y = layer.forward(cupycnn.asarray(x), training)
    dx = layer.backward(cupycnn.asarray(dy))
    return y, dx


def _check(layer, x, dy, expected):
    y, dx = _run(layer, x, dy, training=expected[0])
    ry, rdx, rdw, rdb = expected[1]
    assert_matches(y, ry, "y")
    assert_matches(dx, rdx, "dx")
    assert_matches(layer.grads["weight"], rdw, "dweight")
    assert_matches(layer.grads["bias"], rdb, "dbias")


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (4, 17, 3, 3), (2, 70, 2, 5), (3, 1, 4, 3)],
                         ids=str)
def test_batchnorm2d(kernel_device, rng, shape, training):
    channels = shape[1]
    layer = BatchNorm2D(channels)
    w, b = _randomise(layer, rng, channels)
    running_mean, running_var = randn(rng, channels), rng.uniform(0.5, 2, channels)
    layer.buffers["running_mean"][...] = cupycnn.asarray(running_mean)
    layer.buffers["running_var"][...] = cupycnn.asarray(running_var.astype(np.float32))
    x = randn(rng, *shape) * 3 + 1
    dy = randn(rng, *shape)
    frozen = {} if training else dict(mean=running_mean.astype(np.float64),
                                      var=running_var.astype(np.float32).astype(np.float64))
    _check(layer, x, dy, (training, _textbook_batchnorm(x.astype(np.float64),
                                                        dy.astype(np.float64), w, b, **frozen)))


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("shape", [(5, 70), (7, 3), (6, 1), (3, 17, 9), (5, 3, 1)], ids=str)
def test_batchnorm1d(kernel_device, rng, shape, training):
    # Few values per channel make the training dx ill-conditioned: dx is dy projected away from
    # the constants and from xhat, which leaves n - 2 dimensions. With n = 2 it is rounding noise
    # (proportional to 1 - xhat^2 = eps / (var + eps)); with n = 3, one dimension, a random dy
    # lies close to the removed plane often enough to lose float32's digits. Hence n >= 5.
    channels = shape[1]
    layer = BatchNorm1D(channels)
    w, b = _randomise(layer, rng, channels)
    x, dy = randn(rng, *shape), randn(rng, *shape)
    frozen = {} if training else dict(mean=np.zeros(channels), var=np.ones(channels))
    _check(layer, x, dy, (training, _textbook_batchnorm(x.astype(np.float64),
                                                        dy.astype(np.float64), w, b, **frozen)))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_over_several_steps_then_evaluation(kernel_device, rng, momentum):
    _running_statistics_over_several_steps_then_evaluation(rng, momentum)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_over_several_steps_on_numpy(numpy_device, rng, momentum):
    _running_statistics_over_several_steps_then_evaluation(rng, momentum)


def _running_statistics_over_several_steps_then_evaluation(rng, momentum):
    """Four training steps against PyTorch's rule (unbiased variance in the running estimate,
    momentum or the cumulative average), then evaluation uses exactly those estimates."""
    layer = BatchNorm2D(5, momentum=momentum)
    running_mean, running_var = np.zeros(5), np.ones(5)
    for step in range(1, 5):
        x = (randn(rng, 3, 5, 2, 3) * step + np.float32(step)).astype(np.float32)
        layer.forward(cupycnn.asarray(x), training=True)
        factor = 1 / step if momentum is None else momentum
        x64 = x.astype(np.float64)
        running_mean = (1 - factor) * running_mean + factor * x64.mean(axis=(0, 2, 3))
        running_var = (1 - factor) * running_var + factor * x64.var(axis=(0, 2, 3), ddof=1)
        assert_matches(layer.buffers["running_mean"], running_mean, f"running_mean {step}")
        assert_matches(layer.buffers["running_var"], running_var, f"running_var {step}")
        assert int(cupycnn.asnumpy(layer.buffers["num_batches_tracked"])) == step
    x, dy = randn(rng, 2, 5, 3, 3), randn(rng, 2, 5, 3, 3)
    expected = _textbook_batchnorm(x.astype(np.float64), dy.astype(np.float64), np.ones(5),
                                   np.zeros(5), mean=running_mean, var=running_var)
    _check(layer, x, dy, (False, expected))
    assert int(cupycnn.asnumpy(layer.buffers["num_batches_tracked"])) == 4   # eval: unchanged


class _TwoRankAllReduce:
    """A stand-in for the data-parallel all-reduce, for the rank that holds the first half of a
    batch: adds the other rank's sums (computed here with the stage kernels, as that rank
    would) to this rank's, and the counts. Records what it was called with."""

    def __init__(self, x_other, dy_other):
        self.x_other, self.dy_other, self.saved, self.calls = x_other, dy_other, None, []

    def __call__(self, sums, count):
        if not self.calls:          # forward: (sum x, sum x^2)
            other = bn_ops.batchnorm_stats(self.x_other)
        else:                       # backward: (sum dy, sum dy xhat) with the global mean, invstd
            other = bn_ops.batchnorm_backward_reduce(self.x_other, self.dy_other,
                                                     self.saved["mean"], self.saved["invstd"])
        self.calls.append((sums.shape, count))
        other_count = self.x_other.size // self.x_other.shape[1]
        return cupycnn.asarray(cupycnn.asnumpy(sums) + cupycnn.asnumpy(other)), count + other_count


def test_stats_reducer_is_where_an_all_reduce_makes_batchnorm_synchronised(kernel_device, rng):
    """A rank holding half the batch, with an all-reduce as its stats_reducer, computes the
    full batch's output and input gradient on its half, the full batch's running statistics,
    and its own half's parameter gradients (which the gradient all-reduce then adds)."""
    x, dy = randn(rng, 6, 4, 3, 5) * 2 + 1, randn(rng, 6, 4, 3, 5)
    full = BatchNorm2D(4)
    _randomise(full, rng, 4)
    rank0 = BatchNorm2D(4)
    rank0.load_state_dict(full.state_dict())
    reducer = _TwoRankAllReduce(cupycnn.asarray(x[3:]), cupycnn.asarray(dy[3:]))
    rank0.stats_reducer = reducer
    y_full, dx_full = _run(full, x, dy, training=True)
    y_half = rank0.forward(cupycnn.asarray(x[:3]))
    reducer.saved = rank0._saved          # the global mean and invstd, for the other rank's part
    dx_half = rank0.backward(cupycnn.asarray(dy[:3]))
    assert reducer.calls == [((4, 2), 45), ((4, 2), 45)]
    assert_matches(y_half, cupycnn.asnumpy(y_full)[:3], "y")
    assert_matches(dx_half, cupycnn.asnumpy(dx_full)[:3], "dx")
    for name in ("running_mean", "running_var"):
        assert_matches(rank0.buffers[name], cupycnn.asnumpy(full.buffers[name]), name)
    w = cupycnn.asnumpy(full.params["weight"]).astype(np.float64)
    _, _, dw_half, db_half = _textbook_batchnorm(x[:3].astype(np.float64),
                                                 dy[:3].astype(np.float64), w, np.zeros(4))
    # The half's xhat uses the global statistics: recompute them for the reference.
    mean, var = x.astype(np.float64).mean(axis=(0, 2, 3)), x.astype(np.float64).var(axis=(0, 2, 3))
    xhat = (x[:3] - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + EPS)
    assert_matches(rank0.grads["weight"], (dy[:3] * xhat).sum(axis=(0, 2, 3)), "dweight")
    assert_matches(rank0.grads["bias"], dy[:3].astype(np.float64).sum(axis=(0, 2, 3)), "dbias")
    assert not np.allclose(dw_half, (dy[:3] * xhat).sum(axis=(0, 2, 3)))   # local stats differ


def test_stats_reducer_is_not_called_in_evaluation(rng):
    cupycnn.use("sim")
    layer = BatchNorm1D(3)
    layer.stats_reducer = lambda sums, count: pytest.fail("called in evaluation")
    layer.forward(cupycnn.asarray(randn(rng, 4, 3)), training=False)
    layer.backward(cupycnn.asarray(randn(rng, 4, 3)))


@pytest.mark.parametrize("shape, groups", [((1, 6, 5, 3), 2), ((3, 17, 4), 17), ((2, 70, 3, 3), 7),
                                           ((4, 5), 1)], ids=str)
def test_groupnorm(kernel_device, rng, shape, groups):
    """Against a textbook transcription; the same in training and evaluation."""
    channels = shape[1]
    layer = GroupNorm(groups, channels)
    w, b = _randomise(layer, rng, channels)
    x, dy = randn(rng, *shape) * 2 - 1, randn(rng, *shape)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    g = x64.reshape(shape[0], groups, -1)
    xhat = ((g - g.mean(axis=2, keepdims=True)) /
            np.sqrt(g.var(axis=2, keepdims=True) + EPS)).reshape(shape)
    cshape = (1, -1) + (1,) * (len(shape) - 2)
    dxhat = (dy64 * w.reshape(cshape)).reshape(shape[0], groups, -1)
    xh = xhat.reshape(shape[0], groups, -1)
    invstd = 1 / np.sqrt(g.var(axis=2, keepdims=True) + EPS)
    dx = (invstd * (dxhat - dxhat.mean(axis=2, keepdims=True)
                  - xh * (dxhat * xh).mean(axis=2, keepdims=True))).reshape(shape)
    axes = (0,) + tuple(range(2, len(shape)))
    expected = (xhat * w.reshape(cshape) + b.reshape(cshape), dx, (dy64 * xhat).sum(axis=axes),
                dy64.sum(axis=axes))
    for training in (True, False):
        _check(layer, x, dy, (training, expected))


def test_batch_of_one_value_per_channel_is_refused_when_training(rng):
    """PyTorch: 'Expected more than 1 value per channel when training, got input size ...'."""
    for device in ("numpy", "sim"):
        cupycnn.use(device)
        with pytest.raises(ValueError, match=r"BatchNorm1D\(3, eps=1e-05, momentum=0.1\): "
                                             r"expected more than 1 value per channel when "
                                             r"training, got input size \(1, 3\)"):
            BatchNorm1D(3).forward(cupycnn.asarray(randn(rng, 1, 3)))
        with pytest.raises(ValueError, match=r"got input size \(1, 3, 1, 1\)"):
            BatchNorm2D(3).forward(cupycnn.asarray(randn(rng, 1, 3, 1, 1)))
        BatchNorm1D(3).forward(cupycnn.asarray(randn(rng, 1, 3)), training=False)
        BatchNorm1D(3).forward(cupycnn.asarray(randn(rng, 1, 3, 2)))     # L = 2: two values
        BatchNorm2D(3).forward(cupycnn.asarray(randn(rng, 1, 3, 2, 1)))


def test_state_dict_names_dtypes_and_a_pytorch_checkpoint():
    cupycnn.use("sim")
    layer = BatchNorm2D(4)
    state = layer.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert [state[k].dtype for k in state] == [np.float32] * 4 + [np.int64]
    assert state["num_batches_tracked"].shape == () and state["num_batches_tracked"] == 0
    np.testing.assert_array_equal(state["weight"], np.ones(4))
    np.testing.assert_array_equal(state["bias"], np.zeros(4))
    np.testing.assert_array_equal(state["running_mean"], np.zeros(4))
    np.testing.assert_array_equal(state["running_var"], np.ones(4))
    # What torch.nn.BatchNorm2d(4).state_dict() holds after 100 steps, as NumPy arrays.
    checkpoint = {"weight": np.full(4, 2, np.float32), "bias": np.full(4, 0.5, np.float32),
                  "running_mean": np.arange(4, dtype=np.float32),
                  "running_var": np.full(4, 3, np.float32),
                  "num_batches_tracked": np.array(100, dtype=np.int64)}
    layer.load_state_dict(checkpoint, strict=True)
    layer.forward(cupycnn.asarray(np.ones((2, 4, 1, 1), np.float32)))
    counter = layer.state_dict()["num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64 and counter == 101
    layer.to(np.float64)                 # a gradient check's copy: the counter stays int64, 0-d
    assert layer.buffers["num_batches_tracked"].shape == ()
    assert layer.buffers["num_batches_tracked"].dtype == np.int64
    assert list(GroupNorm(2, 4).state_dict()) == ["weight", "bias"]
    assert list(BatchNorm1D(3).state_dict()) == list(state)


def test_repr_and_construction_errors():
    assert repr(BatchNorm2D(64)) == "BatchNorm2D(64, eps=1e-05, momentum=0.1)"
    assert repr(BatchNorm1D(8, eps=1e-3, momentum=None)) == \
        "BatchNorm1D(8, eps=0.001, momentum=None)"
    assert repr(GroupNorm(32, 64)) == "GroupNorm(32, 64, eps=1e-05)"
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        GroupNorm(3, 8)
    with pytest.raises(ValueError, match="num_features must be (an integer of )?at least 1"):
        BatchNorm2D(0)


def test_wrong_input_shapes_name_the_layer(rng):
    cupycnn.use("sim")
    with pytest.raises(ValueError, match=r"BatchNorm2D\(3, eps=1e-05, momentum=0.1\): input must "
                                         r"have shape \(N, 3, H, W\), got \(2, 3, 4\)"):
        BatchNorm2D(3).forward(cupycnn.asarray(randn(rng, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"input must have shape \(N, 3, H, W\), got "
                                         r"\(2, 4, 5, 5\)"):
        BatchNorm2D(3).forward(cupycnn.asarray(randn(rng, 2, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"BatchNorm1D\(3, .*\): input must have shape \(N, 3\) "
                                         r"or \(N, 3, L\), got \(2, 3, 4, 4\)"):
        BatchNorm1D(3).forward(cupycnn.asarray(randn(rng, 2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"input must have shape \(N, 3, L\), got \(2, 5, 4\)"):
        BatchNorm1D(3).forward(cupycnn.asarray(randn(rng, 2, 5, 4)))
    with pytest.raises(ValueError, match=r"GroupNorm\(2, 4, eps=1e-05\): input must have shape "
                                         r"\(N, 4, \*\), got \(2, 6, 3\)"):
        GroupNorm(2, 4).forward(cupycnn.asarray(randn(rng, 2, 6, 3)))
    with pytest.raises(ValueError, match=r"BatchNorm2D.*: input must be float32 or bf16 "
                                         r"\(uint16\) on the sim device, got float64"):
        BatchNorm2D(3).forward(randn(rng, 2, 3, 4, 4, dtype=np.float64))
    layer = GroupNorm(2, 4)
    layer.forward(cupycnn.asarray(randn(rng, 2, 4, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4, 3\), got \(2, 4, 2\)"):
        layer.backward(cupycnn.asarray(randn(rng, 2, 4, 2)))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm2D(3).backward(cupycnn.asarray(randn(rng, 2, 3, 4, 4)))
