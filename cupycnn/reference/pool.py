"""Max, average and global average pooling: the specification of kernels/pool.cu.

Semantics are PyTorch's `nn.MaxPool2d`, `nn.AvgPool2d` (count_include_pad=True) and
`nn.AdaptiveAvgPool2d(1)` followed by a flatten, for NCHW input, with ceil_mode=False and
dilation=1 (neither is offered).

Geometry, per spatial axis (height shown): kernel k, stride s, padding p,

    out_height = floor((height + 2p - k) / s) + 1
    window (oh) covers input rows oh*s - p ... oh*s - p + k - 1

Max pooling pads with -inf, which never wins: padding is at most k/2, so every window holds a
real element, and ties go to the first maximum in window order (row-major within the window), so
a padded -inf never beats a real one. A NaN in a window propagates: the output is NaN and the
argmax is the first NaN. The argmax is the flat index ih * width + iw in the input plane (what
PyTorch's `return_indices=True` gives), int32.

Backward, here written as the scatter that the chain rule reads as (the kernels compute the
same sums as a gather, one input element at a time):

    max:     dx[ih, iw] = sum of dy[oh, ow] over the windows whose argmax is (ih, iw)
    average: dx[ih, iw] = sum of dy[oh, ow] / (kh * kw) over the windows covering (ih, iw)
    global:  dx[h, w]   = dy / (height * width)

Every function computes in its input's dtype (float32 or float64).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def pair(value):
    """An int or a pair of ints as (height, width), as PyTorch's `_pair`."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def geometry(kernel_size, stride=None, padding=0):
    """((kh, kw), (sh, sw), (ph, pw)) from PyTorch-style arguments; stride defaults to the
    kernel size."""
    kernel = pair(kernel_size)
    return kernel, (kernel if stride is None else pair(stride)), pair(padding)


def output_size(size, kernel, stride, padding):
    """floor((size + 2 * padding - kernel) / stride) + 1 on each axis (ceil_mode=False)."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding))


def _windows(plane, kernel, stride, padding, fill):
    """[..., H, W] -> [..., OH, OW, kh * kw]: every window of the padded array, its elements in
    window order (row-major)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    pad = [(0, 0)] * (plane.ndim - 2) + [(ph, ph), (pw, pw)]
    padded = np.pad(plane, pad, constant_values=fill)
    windows = sliding_window_view(padded, (kh, kw), axis=(-2, -1))[..., ::sh, ::sw, :, :]
    return windows.reshape(windows.shape[:-2] + (kh * kw,))


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x [N, C, H, W] -> (y [N, C, OH, OW], argmax int32 [N, C, OH, OW])."""
    kernel, stride, padding = geometry(kernel_size, stride, padding)
    height, width = x.shape[2:]
    values = _windows(x, kernel, stride, padding, -np.inf)
    # The flat input index of every window element, -1 for padding.
    index = _windows(np.arange(height * width).reshape(height, width), kernel, stride,
                     padding, -1)
    y = values.max(axis=-1)                                      # NaN propagates
    is_max = (values == y[..., None]) | (np.isnan(values) & np.isnan(y)[..., None])
    first = np.argmax(is_max & (index >= 0), axis=-1)            # first maximum, never a pad
    argmax = np.take_along_axis(np.broadcast_to(index, values.shape), first[..., None], -1)
    return y.astype(x.dtype, copy=False), argmax[..., 0].astype(np.int32)


def max_pool2d_backward(dy, argmax, input_size):
    """dy, argmax [N, C, OH, OW] -> dx [N, C, H, W]: each output's gradient goes to its argmax
    (summed where one input element is the maximum of several overlapping windows)."""
    n, c = dy.shape[:2]
    height, width = input_size
    dx = np.zeros((n * c, height * width), dtype=dy.dtype)
    planes = np.arange(n * c)[:, None]
    np.add.at(dx, (planes, argmax.reshape(n * c, -1)), dy.reshape(n * c, -1))
    return dx.reshape(n, c, height, width)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x [N, C, H, W] -> y [N, C, OH, OW]: the window's sum over kh * kw, padding counted as
    zeros (count_include_pad=True)."""
    kernel, stride, padding = geometry(kernel_size, stride, padding)
    window_sum = _windows(x, kernel, stride, padding, 0).sum(axis=-1)
    return (window_sum / x.dtype.type(kernel[0] * kernel[1])).astype(x.dtype, copy=False)


def avg_pool2d_backward(dy, input_size, kernel_size, stride=None, padding=0):
    """dy [N, C, OH, OW] -> dx [N, C, H, W]: every window spreads dy / (kh * kw) over the
    elements it covers; what lands on padding is dropped."""
    (kh, kw), (sh, sw), (ph, pw) = geometry(kernel_size, stride, padding)
    height, width = input_size
    out_h, out_w = dy.shape[2:]
    share = dy / dy.dtype.type(kh * kw)
    padded = np.zeros(dy.shape[:2] + (height + 2 * ph, width + 2 * pw), dtype=dy.dtype)
    for i in range(kh):                  # window element (i, j) of every window at once
        for j in range(kw):
            padded[:, :, i:i + sh * out_h:sh, j:j + sw * out_w:sw] += share
    return np.ascontiguousarray(padded[:, :, ph:ph + height, pw:pw + width])


def global_avg_pool2d_forward(x):
    """x [N, C, H, W] -> y [N, C]: the mean of each plane."""
    return x.mean(axis=(2, 3), dtype=x.dtype)


def global_avg_pool2d_backward(dy, input_size):
    """dy [N, C] -> dx [N, C, H, W] = dy / (H * W) everywhere in the plane."""
    height, width = input_size
    share = dy / dy.dtype.type(height * width)
    return np.ascontiguousarray(np.broadcast_to(share[:, :, None, None],
                                                dy.shape + (height, width)))
