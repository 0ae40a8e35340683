"""2-D convolution, the specification of kernels/conv2d.cu: PyTorch's conv2d without dilation or
groups, in vectorised NumPy, float32 or float64 (it computes in the inputs' dtype).

x [N, C_in, H, W], weight w [C_out, C_in, kh, kw], bias b [C_out] or None, y [N, C_out, H_out,
W_out]; stride (sh, sw) and padding (ph, pw), each given as an int or an (h, w) pair;
H_out = (H + 2 ph - kh) // sh + 1, likewise W_out. The windows (the im2col entries) are

    win[n, c, i, j, r, s] = x[n, c, i sh - ph + r, j sw - pw + s]    (0 outside x: zero padding)

and the forward pass and its three gradients, dL/dx, dL/dw, dL/db from dy = dL/dy:

    y[n, o, i, j]  = b[o] + sum_{c, r, s} w[o, c, r, s] win[n, c, i, j, r, s]
    dx[n, c, h, v] = sum_{o, i, j, r, s} dy[n, o, i, j] w[o, c, r, s]
                       over i sh - ph + r = h and j sw - pw + s = v          (col2im)
    dw[o, c, r, s] = sum_{n, i, j} dy[n, o, i, j] win[n, c, i, j, r, s]
    db[o]          = sum_{n, i, j} dy[n, o, i, j]                     (ops.reduce.channel_sum)

dx is the adjoint of y in x: each output pixel's window gets back sum_o dy[n, o, i, j] w[o],
overlapping windows add, and what lands on the padding is dropped.

`precision` ("fp32", "tf32" or "bf16"; see cupycnn/precision.py) rounds the two operands of each
product as the tensor cores do (rounding.round_operand) before the product, which is then exact
in the inputs' dtype: the specification of the tensor-core kernels (kernels/conv2d_tc.cu).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .rounding import round_operand


def output_size(height, width, kernel_size, stride, padding):
    """(H_out, W_out) of a convolution of an H x W input."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1


def _windows(x, kernel_size, stride, padding):
    """win[n, c, i, j, r, s] = xp[n, c, i sh + r, j sw + s]: a strided view, no copy but the
    padding."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, pair(stride), pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    return sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def conv2d_forward(x, weight, bias, stride=1, padding=0, precision="fp32", residual=None,
                   relu=False):
    """y = conv2d(x, weight) + bias; bias [C_out] or None; then + residual and max(y, 0)
    (the epilogue), when given."""
    x, weight = round_operand(x, precision), round_operand(weight, precision)
    win = _windows(x, weight.shape[2:], stride, padding)            # [N, C, Ho, Wo, kh, kw]
    y = np.tensordot(win, weight, axes=([1, 4, 5], [1, 2, 3]))  # over c, r, s: [N, Ho, Wo, C_out]
    if bias is not None:
        y = y + bias
    y = np.ascontiguousarray(y.transpose(0, 3, 1, 2), dtype=np.result_type(x, weight))
    if residual is not None:
        y = y + residual
    return np.maximum(y, 0) if relu else y


def conv2d_backward_input(dy, weight, input_shape, stride=1, padding=0, precision="fp32"):
    """dx [N, C_in, H, W], the module docstring's col2im."""
    dy, weight = round_operand(dy, precision), round_operand(weight, precision)
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, w = input_shape
    kh, kw = weight.shape[2:]
    ho, wo = dy.shape[2:]
    cols = np.tensordot(dy, weight, axes=([1], [0]))         # over o: [N, Ho, Wo, C, kh, kw]
    cols = cols.transpose(0, 3, 4, 5, 1, 2)                           # [N, C, kh, kw, Ho, Wo]
    # Rows (columns) of the padded input past the last window get no gradient: they stay 0.
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.result_type(dy, weight))
    # Tap (r, s) of output pixel (i, j) lands on padded row i sh + r, column j sw + s: for each
    # tap, one strided add over every (i, j) at once (kh kw vectorised adds).
    for r in range(kh):
        for s in range(kw):
            dxp[:, :, r:r + (ho - 1) * sh + 1:sh, s:s + (wo - 1) * sw + 1:sw] += cols[:, :, r, s]
    return np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + w])


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, precision="fp32"):
    """dw [C_out, C_in, kh, kw] = sum over images and output pixels of dy times the window."""
    dy, x = round_operand(dy, precision), round_operand(x, precision)
    win = _windows(x, tuple(weight_shape[2:]), stride, padding)       # [N, C, Ho, Wo, kh, kw]
    dw = np.tensordot(dy, win, axes=([0, 2, 3], [0, 2, 3]))  # over n, i, j: [C_out, C, kh, kw]
    return np.ascontiguousarray(dw, dtype=np.result_type(dy, x))


# ------------------------------------------ arguments (the ops' and the layer's too), not maths

def pair(value, name="value"):
    """(h, w) from an int or a pair of ints, as PyTorch's Conv2d reads kernel_size, stride and
    padding."""
    def whole(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    if whole(value):
        return int(value), int(value)
    try:
        h, w = value
        if whole(h) and whole(w):
            return int(h), int(w)
    except (TypeError, ValueError):
        pass
    shown = " ".join(repr(value).split())
    raise ValueError(f"{name} must be an int or a pair of ints (h, w), got "
                     f"{shown if len(shown) <= 60 else shown[:57] + '...'}")
