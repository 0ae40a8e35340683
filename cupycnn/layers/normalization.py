"""Normalisation layers: PyTorch's BatchNorm1d, BatchNorm2d and GroupNorm.
Kernels: kernels/batchnorm.cu, kernels/groupnorm.cu; maths: reference/batchnorm.py,
reference/groupnorm.py; the whole story: docs/layers/norm.md.

BatchNorm, training (per channel c, n elements: N * H * W, or N, or N * L):
    y = (x - mean) / sqrt(var + eps) * weight + bias      mean, var: this batch's, var biased
    running_mean <- (1 - momentum) running_mean + momentum mean
    running_var  <- (1 - momentum) running_var  + momentum var * n / (n - 1)
    dx = weight / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat))
BatchNorm, evaluation (`layer.eval()`, or forward(x, training=False)): the running statistics in
place of the batch's, left unchanged, and (for fine-tuning with frozen statistics)
dx = weight / sqrt(running_var + eps) * dy.
Both: dweight = sum dy * xhat, dbias = sum dy.

Fused epilogue (BatchNorm1D/2D): `relu=True` applies a ReLU to the output in the same pass, and
`forward_residual(x, residual)` adds a residual before it: y = relu(bn(x) + residual), ResNet's
"bn2, += shortcut, relu" as one kernel. The backward then masks dy by y > 0 inside its two
kernels, and `backward_residual(dy)` also returns the residual's gradient; the same maths as
the three layers composed (tests/test_fused.py), one or two passes over memory fewer.

Synchronised batchnorm: the statistics are computed in stages, and between them a training
forward and its backward call `self.stats_reducer(sums, count) -> (sums, count)` with this
process's per-channel float64 sums [C, 2] and element count per channel: in the forward on
(sum x, sum x^2), in the backward on (sum dy, sum dy * xhat). It returns the sums and count to
use, as new arrays: the parameter gradients are taken from the sums passed in (this rank's; the
gradient all-reduce adds them up later). By default it returns its arguments
(`local_statistics`); cupycnn.distributed.sync_batchnorm sets an all-reduce over the ranks (why
that gives the global batch's forward and backward: docs/DISTRIBUTED.md, "Synchronised
batchnorm"). It is not called in evaluation, where the running statistics are used.
"""
import numpy as np

from .. import devices as _device
from ..ops import batchnorm as bn_ops
from ..ops import groupnorm as gn_ops
from ..ops._check import check_arrays, check_integer, shown
from ..ops._storage import activation_dtypes
from .base import Layer, LayerName, check_allocation


def local_statistics(sums, count):
    """The default `stats_reducer`: this process's batch alone (no synchronisation)."""
    return sums, count


class _BatchNorm(Layer):
    """Shared by BatchNorm1D and BatchNorm2D (PyTorch's _BatchNorm with affine=True and
    track_running_stats=True): weight (ones) and bias (zeros) of shape [num_features]; buffers
    running_mean (zeros), running_var (ones) and num_batches_tracked (int64 scalar, 0), the
    state_dict names and dtypes of PyTorch, so that torchvision checkpoints load strictly.
    momentum=None makes the running statistics a cumulative average, as in PyTorch."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, relu=False):
        super().__init__()
        who = type(self).__name__
        num_features = check_integer(who, "num_features", num_features, 1)
        eps = _positive(who, "eps", eps)
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(
                momentum, (int, float, np.integer, np.floating)) or not 0 <= momentum <= 1):
            raise ValueError(f"{who}: momentum must be None or a number in [0, 1], got "
                             f"{shown(momentum)}")
        check_allocation((num_features,), 4, count=6)    # params, gradients, statistics
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.relu = bool(relu)
        self.stats_reducer = local_statistics
        self._received = None        # (y, sums) from the Conv2D feeding this (receive_statistics)
        self.add_param("weight", np.ones(self.num_features, np.float32))
        self.add_param("bias", np.zeros(self.num_features, np.float32))
        self.add_buffer("running_mean", np.zeros(self.num_features, np.float32))
        self.add_buffer("running_var", np.ones(self.num_features, np.float32))
        self.add_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
                + (", relu=True" if self.relu else ""))

    def _check_input_shape(self, x):
        raise NotImplementedError

    def receive_statistics(self, x, sums):
        """Take (sum x, sum x^2) per channel of x [C, 2] float64, computed where x was
        (Conv2D.feed_statistics_to): the next training forward on this very x uses them in place
        of its own reduction (stage 1), once."""
        self._received = (x, sums)

    def _local_sums(self, x):
        received, self._received = self._received, None
        if received is not None and received[0] is x:
            return received[1]
        return bn_ops.batchnorm_stats(x)

    def forward(self, x, training=None):
        return self._forward(x, training, None)

    def forward_residual(self, x, residual, training=None):
        """y = relu(bn(x) + residual) (without the ReLU when relu=False), one pass; the
        backward is backward_residual."""
        self._check_input_shape(x)
        check_arrays(LayerName(self), dtypes=activation_dtypes(), input=(x, None),
                     residual=(residual, tuple(x.shape)))
        y = self._forward(x, training, residual)
        for hook in self._forward_hooks or ():         # as __call__ runs them
            hook(self, x, y)
        return y

    def _forward(self, x, training, residual):
        self._check_input_shape(x)
        training = self.is_training(training)
        p, b = self.params, self.buffers
        epilogue = dict(residual=residual, relu=self.relu)
        local_count = count = x.size // self.num_features
        if training:
            sums = self._local_sums(x)                                    # stage 1
            sums, count = self.stats_reducer(sums, local_count)           # all-reduce point
            if count <= 1:
                raise ValueError(f"{self!r}: expected more than 1 value per channel when "
                                 f"training, got input size {tuple(x.shape)}")
            y, mean, invstd = bn_ops.batchnorm_normalize(x, sums, count, p["weight"], p["bias"],
                                                         self.eps, **epilogue)   # stage 2
            bn_ops.batchnorm_update_running_stats(sums, count, b["running_mean"],
                                                  b["running_var"], b["num_batches_tracked"],
                                                  self.momentum)
        else:
            y, mean, invstd = bn_ops.batchnorm_normalize_running(
                x, b["running_mean"], b["running_var"], p["weight"], p["bias"], self.eps,
                **epilogue)
        self.save_for_backward(x=x, mean=mean, invstd=invstd, local_count=local_count,
                               training=training, y=y if self.relu else None,
                               residual=residual is not None)
        return y

    def backward(self, dy):
        saved = self.saved()
        if saved["residual"]:
            raise RuntimeError(f"{self!r}: the forward took a residual (forward_residual); its "
                               f"backward is backward_residual, which also returns the "
                               f"residual's gradient")
        return self._backward(dy, saved)[0]

    def backward_residual(self, dy):
        """(dx, dresidual) after forward_residual."""
        saved = self.saved()
        if not saved["residual"]:
            raise RuntimeError(f"{self!r}: backward_residual follows forward_residual; the "
                               f"forward took no residual (use backward)")
        return self._backward(dy, saved)

    def _backward(self, dy, saved):
        x, training, y = saved["x"], saved["training"], saved["y"]
        self.check_grad_output(dy, x.shape)
        local = bn_ops.batchnorm_backward_reduce(x, dy, saved["mean"], saved["invstd"],
                                                 y=y)                     # stage 3
        sums, count = local, saved["local_count"]
        if training:
            sums, count = self.stats_reducer(local, count)                # all-reduce point
        dresidual = _device.empty(x.shape, x.dtype) if saved["residual"] else None
        dx, _, _ = bn_ops.batchnorm_backward_apply(                        # stage 4
            x, dy, self.params["weight"], saved["mean"], saved["invstd"], sums, count,
            batch_statistics=training, param_sums=local, dweight=self.grads["weight"],
            dbias=self.grads["bias"], y=y, dresidual=dresidual)
        return dx, dresidual


def _positive(who, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not value > 0 or not np.isfinite(value):
        raise ValueError(f"{who}: {name} must be a positive number, got {shown(value)}")
    return float(value)


class BatchNorm1D(_BatchNorm):
    """PyTorch's BatchNorm1d(num_features, eps=1e-5, momentum=0.1): input [N, C] or [N, C, L],
    statistics per channel over N (and L). Training needs more than one value per channel.
    relu=True: a ReLU fused after it (module docstring)."""

    def _check_input_shape(self, x):
        self.check_input(x, None)                     # device, layout and dtype first
        if x.ndim not in (2, 3):
            raise ValueError(f"{self!r}: input must have shape (N, {self.num_features}) or "
                             f"(N, {self.num_features}, L), got {tuple(x.shape)}")
        self.check_input(x, ("N", self.num_features) + (("L",) if x.ndim == 3 else ()))


class BatchNorm2D(_BatchNorm):
    """PyTorch's BatchNorm2d(num_features, eps=1e-5, momentum=0.1): input [N, C, H, W],
    statistics per channel over N, H and W. relu=True: a ReLU fused after it (module
    docstring)."""

    def _check_input_shape(self, x):
        self.check_input(x, ("N", self.num_features, "H", "W"))


class GroupNorm(Layer):
    """PyTorch's GroupNorm(num_groups, num_channels, eps=1e-5) with affine=True: input
    [N, C, *]; the channels form num_groups groups of consecutive channels, each (sample, group)
    normalised with its own mean and biased variance, then weight (ones) and bias (zeros), both
    [num_channels], applied per channel. The same in training and evaluation; no buffers."""

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        num_groups = check_integer("GroupNorm", "num_groups", num_groups, 1)
        num_channels = check_integer("GroupNorm", "num_channels", num_channels, 1)
        eps = _positive("GroupNorm", "eps", eps)
        if num_groups < 1 or num_channels < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels must be divisible by num_groups, got "
                             f"num_groups={num_groups}, num_channels={num_channels}")
        check_allocation((num_channels,), 4, count=4)
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, float(eps)
        self.add_param("weight", np.ones(num_channels, np.float32))
        self.add_param("bias", np.zeros(num_channels, np.float32))

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"

    def forward(self, x, training=None):
        self.check_input(x, None)
        self.check_input(x, ("N", self.num_channels) + (None,) * max(x.ndim - 2, 0))
        y, mean, invstd = gn_ops.groupnorm_forward(x, self.params["weight"], self.params["bias"],
                                                 self.num_groups, self.eps)
        self.save_for_backward(x=x, mean=mean, invstd=invstd)
        return y

    def backward(self, dy):
        saved = self.saved()
        x = saved["x"]
        self.check_grad_output(dy, x.shape)
        dx, _, _ = gn_ops.groupnorm_backward(x, dy, self.params["weight"], saved["mean"],
                                             saved["invstd"], self.num_groups,
                                             dweight=self.grads["weight"],
                                             dbias=self.grads["bias"])
        return dx
