"""Pooling layers: PyTorch's `nn.MaxPool2d`, `nn.AvgPool2d` and a global average pool
(`nn.AdaptiveAvgPool2d(1)` then `flatten(1)`). Kernels: kernels/pool.cu; reference:
reference/pool.py; wrappers: ops/pool.py.

    max:     y[oh, ow] = max over the window of x        dx: dy to each window's (first) argmax
    average: y[oh, ow] = sum over the window / (kh * kw)  dx: dy / (kh * kw) to every element
    global:  y[n, c]   = mean of the plane x[n, c]        dx: dy / (H * W) everywhere

Windows: kernel_size, stride (default: kernel_size) and padding, each an int or an (h, w) pair;
the output size is floor((H + 2 * padding - kernel) / stride) + 1. ceil_mode and dilation are
not offered (PyTorch's defaults, False and 1, always hold); padding may be at most half the
kernel, as PyTorch requires. Input is [N, C, H, W] (a batch; unbatched 3-D input is refused).
"""
from ..ops import pool as ops
from .base import Layer, LayerName

_NCHW = ("N", "C", "H", "W")


class _Pool2D(Layer):
    """What max and average pooling share: the window geometry and its checks."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride      # PyTorch's default
        self.padding = padding
        self._geometry = ops.pool_arguments(type(self).__name__, kernel_size, stride, padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def _output_shape(self, x):
        sizes = self.check_input(x, _NCHW)
        input_size = (sizes["H"], sizes["W"])
        out = ops.pool_output_size(LayerName(self), input_size, *self._geometry)
        return input_size, (sizes["N"], sizes["C"]) + tuple(out)


class MaxPool2D(_Pool2D):
    """2-D max pooling, PyTorch's `nn.MaxPool2d(kernel_size, stride=None, padding=0)` with
    dilation=1 and ceil_mode=False. Padding is -inf (never selected). Ties in a window go to the
    first maximum in window order (row-major), as PyTorch; the argmax (int32, flat index in the
    input plane) is kept for backward, which sends each output's gradient to it. No parameters."""

    def forward(self, x, training=None):
        input_size, _ = self._output_shape(x)
        y, argmax = ops.max_pool2d_forward(x, *self._geometry)
        self.save_for_backward(argmax=argmax, input_size=input_size)
        return y

    def backward(self, dy):
        saved = self.saved()
        self.check_grad_output(dy, saved["argmax"].shape)
        return ops.max_pool2d_backward(dy, saved["argmax"], saved["input_size"], *self._geometry)


class AvgPool2D(_Pool2D):
    """2-D average pooling, PyTorch's `nn.AvgPool2d(kernel_size, stride=None, padding=0)` with
    its defaults: count_include_pad=True (padding counts as zeros: every window divides by
    kh * kw), ceil_mode=False, no divisor_override. No parameters."""

    def forward(self, x, training=None):
        input_size, out_shape = self._output_shape(x)
        self.save_for_backward(input_size=input_size, out_shape=out_shape)
        return ops.avg_pool2d_forward(x, *self._geometry)

    def backward(self, dy):
        saved = self.saved()
        self.check_grad_output(dy, saved["out_shape"])
        return ops.avg_pool2d_backward(dy, saved["input_size"], *self._geometry)


class GlobalAvgPool2D(Layer):
    """Global average pooling: [N, C, H, W] -> [N, C], the mean of each plane; PyTorch's
    `nn.AdaptiveAvgPool2d(1)` followed by `torch.flatten(x, 1)` (as at the end of a ResNet).
    No parameters."""

    def forward(self, x, training=None):
        sizes = self.check_input(x, _NCHW)
        self.save_for_backward(input_size=(sizes["H"], sizes["W"]),
                               out_shape=(sizes["N"], sizes["C"]))
        return ops.global_avg_pool2d_forward(x)

    def backward(self, dy):
        saved = self.saved()
        self.check_grad_output(dy, saved["out_shape"])
        return ops.global_avg_pool2d_backward(dy, saved["input_size"])
