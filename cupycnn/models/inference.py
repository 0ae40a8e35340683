"""Inference with the batchnorms folded into the convolutions: conv + bias (+ residual) + ReLU
in one kernel per convolution.

    served = fold_batchnorm(model)      # a trained ResNet (or a Sequential of conv-bn blocks)
    logits = served.forward(x)          # evaluation only: no backward, no batch statistics

In evaluation a batchnorm is an affine map per channel with its running statistics,
y = (x - mean) * s + beta with s = gamma / sqrt(running_var + eps), so a convolution followed by
one is a convolution with weights w * s (per output channel) and bias (b - mean) * s + beta. What
followed the batchnorm (its fused ReLU, a ResNet block's shortcut and final ReLU) becomes the
convolution kernel's epilogue (ops.conv2d.conv2d_forward's residual and relu): a ResNet block is
two (three) convolution launches, and the shortcut's projection one more, with nothing between
them: no batchnorm pass, no add, no ReLU pass over memory. The folded weights are computed in
float64 on the host from the model's current parameters and buffers (fold again after
training further); the results equal the model's evaluation forward to float32 rounding
(tests/test_fused.py).
"""
import collections

import numpy as np

from .. import devices as _device
from ..layers import BatchNorm2D, Conv2D, Layer, ReLU, Sequential
from ..ops import conv2d as conv_ops
from .resnet import _Block


class FoldedConv2D(Layer):
    """A Conv2D and the BatchNorm2D after it, folded (module docstring); `relu`: the batchnorm's
    fused ReLU, applied in the convolution's epilogue. Evaluation only."""

    def __init__(self, conv, bn):
        super().__init__()
        if not isinstance(conv, Conv2D) or not isinstance(bn, BatchNorm2D):
            raise TypeError("FoldedConv2D folds a Conv2D and the BatchNorm2D that follows it")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"FoldedConv2D: {bn!r} does not follow {conv!r} (channels)")
        host = {k: _device.asnumpy(v).astype(np.float64) for k, v in conv.params.items()}
        gamma = _device.asnumpy(bn.params["weight"]).astype(np.float64)
        beta = _device.asnumpy(bn.params["bias"]).astype(np.float64)
        mean = _device.asnumpy(bn.buffers["running_mean"]).astype(np.float64)
        var = _device.asnumpy(bn.buffers["running_var"]).astype(np.float64)
        scale = gamma / np.sqrt(var + bn.eps)
        bias = host.get("bias", np.zeros(conv.out_channels))
        self.add_param("weight", host["weight"] * scale[:, None, None, None])
        self.add_param("bias", (bias - mean) * scale + beta)
        self.stride, self.padding, self.relu = conv.stride, conv.padding, bn.relu
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size="
                f"{tuple(self.params['weight'].shape[2:])}, stride={self.stride}"
                + (", relu=True" if self.relu else ""))

    def forward(self, x, training=False):
        return self.forward_residual(x, None, training)

    def forward_residual(self, x, residual, training=False):
        """relu(conv(x) + bias + residual) in one kernel (without the ReLU when relu=False)."""
        if training:
            raise RuntimeError(f"{self!r}: a folded model is for inference (its batchnorms "
                               f"became constants); train the original model")
        self.check_input(x, ("N", self.in_channels, "H", "W"))
        return conv_ops.conv2d_forward(x, self.params["weight"], self.params["bias"],
                                       self.stride, self.padding, residual=residual,
                                       relu=self.relu)

    def backward(self, dy):
        raise RuntimeError(f"{self!r}: a folded model has no backward; train the original model")


class FoldedBlock(Layer):
    """A ResNet block folded: its convolutions in order, the last one adding the shortcut (the
    input, or the folded projection) and applying the ReLU in its epilogue."""

    def __init__(self, block):
        super().__init__()
        names = [layer for _, layer in block.named_children() if not isinstance(layer, Sequential)]
        pairs = list(zip(names[0::2], names[1::2]))
        self.convs = [FoldedConv2D(conv, bn) for conv, bn in pairs]
        downsample = dict(block.named_children()).get("downsample")
        self.downsample = None if downsample is None else FoldedConv2D(*list(downsample))
        for conv in self.convs:    # a ReLU after every batchnorm but the last, and after the sum
            conv.relu = True

    def named_children(self):
        children = [(f"conv{i + 1}", c) for i, c in enumerate(self.convs)]
        return children + ([("downsample", self.downsample)] if self.downsample else [])

    def forward(self, x, training=False):
        h = x
        for conv in self.convs[:-1]:
            h = conv.forward(h, training)
        shortcut = x if self.downsample is None else self.downsample.forward(x, training)
        return self.convs[-1].forward_residual(h, shortcut, training)

    def backward(self, dy):
        raise RuntimeError("a folded model has no backward; train the original model")


class FoldedModel(Sequential):
    """What fold_batchnorm returns: a Sequential whose forward is evaluation by default."""

    def forward(self, x, training=False):
        return super().forward(x, training)


def fold_batchnorm(model):
    """An inference model: model (a Sequential, e.g. a ResNet or simple_cnn) with every Conv2D
    that a BatchNorm2D follows folded with it, and every ResNet block folded (module docstring);
    the other layers (pooling, dropout, dense, ...) are the model's own objects, shared."""
    if not isinstance(model, Sequential):
        raise TypeError(f"fold_batchnorm takes a Sequential (a ResNet, simple_cnn), got "
                        f"{type(model).__name__}")
    children = list(model.named_children())
    folded = collections.OrderedDict()
    i = 0
    while i < len(children):
        name, layer = children[i]
        following = children[i + 1][1] if i + 1 < len(children) else None
        if isinstance(layer, Conv2D) and isinstance(following, BatchNorm2D):
            folded[name] = conv = FoldedConv2D(layer, following)
            i += 2
            if i < len(children) and isinstance(children[i][1], ReLU):   # an unfused ReLU
                conv.relu = True
                i += 1
            continue
        if isinstance(layer, _Block):
            folded[name] = FoldedBlock(layer)
        elif isinstance(layer, Sequential):
            folded[name] = fold_batchnorm(layer)
        else:
            folded[name] = layer
        i += 1
    return FoldedModel(folded)


__all__ = ["FoldedBlock", "FoldedConv2D", "FoldedModel", "fold_batchnorm"]
