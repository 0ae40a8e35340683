"""The convolution's input checks, run by ops/conv2d.py before any launch and by the Conv2D layer
at construction: a kernel never sees a bad shape. Each failure is a ValueError naming the op."""
import numpy as np

from ..limits import INT32_MAX
from ..reference.conv2d import output_size, pair
from ._check import check_arrays, check_integer
from ._storage import is_bf16


def check_hyper_parameters(who, in_channels, out_channels, kernel_size, stride, padding):
    """The one check of a convolution's hyper-parameters (Conv2D's and the ops'): returns
    kernel_size, stride and padding as (h, w) pairs of ints, or raises a ValueError naming
    `who`."""
    in_channels = check_integer(who, "in_channels", in_channels)      # 3.7 is not 3
    out_channels = check_integer(who, "out_channels", out_channels)
    kernel_size, stride, padding = (pair(value, f"{who}: {name}") for name, value in
                                    (("kernel_size", kernel_size), ("stride", stride),
                                     ("padding", padding)))
    if min(in_channels, out_channels, *kernel_size, *stride) < 1 or min(padding) < 0:
        raise ValueError(f"{who}: in_channels, out_channels, kernel_size and stride must be at "
                         f"least 1 and padding at least 0, got in_channels={in_channels}, "
                         f"out_channels={out_channels}, kernel_size={kernel_size}, "
                         f"stride={stride}, padding={padding}")
    return kernel_size, stride, padding


def checked_output_size(who, height, width, kernel_size, stride, padding):
    """(H_out, W_out) of an H x W input, or a ValueError naming `who` when the kernel does not
    fit the padded input."""
    ho, wo = output_size(height, width, kernel_size, stride, padding)
    if ho < 1 or wo < 1:
        (kh, kw), pad = pair(kernel_size), pair(padding)
        raise ValueError(f"{who}: the {kh}x{kw} kernel does not fit the input: input "
                         f"{height}x{width} padded by {pad} gives an output of {ho}x{wo}; "
                         f"expected at least 1x1")
    return ho, wo


# geometry()'s answers for arguments already checked (a training step asks the same few dozen
# times): keyed by the shapes and the repr of stride and padding, so that 1, True and 1.0
# stay apart.
_checked = {}


def geometry(op, x_shape, weight_shape, stride, padding):
    """Check the convolution against the shapes; return the kernels' scalar arguments (batch,
    C_in, H, W, C_out, kh, kw, sh, sw, ph, pw, H_out, W_out) as ints."""
    key = (tuple(x_shape), tuple(weight_shape), repr(stride), repr(padding))
    result = _checked.get(key)
    if result is None:
        result = _geometry(op, x_shape, weight_shape, stride, padding)
        if len(_checked) > 512:
            _checked.clear()
        _checked[key] = result
    return result


def _geometry(op, x_shape, weight_shape, stride, padding):
    n, c, h, w = (int(v) for v in x_shape)
    o, _, kh, kw = (int(v) for v in weight_shape)
    _, (sh, sw), (ph, pw) = check_hyper_parameters(op, c, o, (kh, kw), stride, padding)
    ho, wo = checked_output_size(op, h, w, (kh, kw), (sh, sw), (ph, pw))
    # (One image of x or y within int: the tensor-core gradients' offsets inside an image.)
    for name, value in (("N * H_out * W_out", n * ho * wo), ("N * H * W", n * h * w),
                        ("C_in * kh * kw", c * kh * kw), ("C_out * kh * kw", o * kh * kw),
                        ("C_out * C_in * kh * kw", o * c * kh * kw), ("C_in * H * W", c * h * w),
                        ("C_out * H_out * W_out", o * ho * wo)):
        if value > INT32_MAX:
            raise ValueError(f"{op}: {name} = {value} exceeds the kernels' int range "
                             f"({INT32_MAX}); split the batch")
    return n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo


def parameter_dtype(activation):
    """The dtype the weight, bias and weight gradient must have beside this activation:
    float32 for BF16 storage, else the activation's."""
    return np.dtype(np.float32) if is_bf16(activation) else activation.dtype


def check_parameters(op, name, activation, bound=None, **specs):
    """Check the float arrays `specs` (name=(array, pattern)) beside the activation `name`:
    float32 for BF16 storage, else the activation's dtype (its mismatch named as such)."""
    if is_bf16(activation):
        return check_arrays(op, bound=bound, dtypes=(np.float32,), **specs)
    return check_arrays(op, bound=bound, **{name: (activation, None)}, **specs)
