"""2-D convolution, forward and both gradients: launches kernels/conv2d.cu (implicit GEMM; no
cuDNN, no cuBLAS). Specified by cupycnn/reference/conv2d.py, function for function.

Semantics of torch.nn.functional.conv2d with dilation 1 and groups 1: x [N, C_in, H, W],
weight [C_out, C_in, kh, kw], bias [C_out] or None, stride and padding an int or an (h, w)
pair, zero padding, y [N, C_out, H_out, W_out], H_out = (H + 2 pad_h - kh) // stride_h + 1.
The bias gradient is ops.reduce.channel_sum(dy).

On the numpy device float32 runs go to cupycnn/cpu/conv2d.py (the same maths, arranged for
speed); `cache`, a dict a layer keeps from its training forward to its backward, lets that path
reuse the forward's im2col columns for the weight gradient. The kernels ignore it.
"""
import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import conv2d as cpu_conv
from ..reference import conv2d as reference
from ..reference.conv2d import output_size, pair
from ..runtime import ceil_div, get_kernel
from ._check import check_arrays, into

# As in conv2d.cu.
CONV_TILE_M, CONV_TILE_N, CONV_TILE_K, CONV_THREADS = 64, 64, 16, 256
CONV_REDUCE_THREADS = 256
# Weight gradient: the reduction over N H_out W_out output pixels is cut into enough chunks
# (blockIdx.z) for about WEIGHT_GRAD_TARGET_BLOCKS blocks (4 per SM of a 132-SM H100), but no
# chunk shorter than WEIGHT_GRAD_MIN_SPLIT_LEN pixels (each chunk costs a partial tile write and
# read). The count depends on the shapes only, so results are the same bits on every run.
WEIGHT_GRAD_TARGET_BLOCKS = 528
WEIGHT_GRAD_MIN_SPLIT_LEN = 128
_INT_MAX = 2**31 - 1
_GRID_Z_MAX = 65535      # CUDA's limit on gridDim.z (stride phases, weight-gradient splits)


def _geometry(op, x_shape, weight_shape, stride, padding):
    """Check the convolution's hyper-parameters against the shapes; return the kernel's scalar
    arguments (batch, C_in, H, W, C_out, kh, kw, sh, sw, ph, pw, H_out, W_out) as ints."""
    (sh, sw), (ph, pw) = pair(stride, f"{op}: stride"), pair(padding, f"{op}: padding")
    if sh < 1 or sw < 1:
        raise ValueError(f"{op}: stride must be at least 1, got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be at least 0, got {(ph, pw)}")
    n, c, h, w = (int(v) for v in x_shape)
    o, _, kh, kw = (int(v) for v in weight_shape)
    for name, value in (("in_channels", c), ("out_channels", o), ("kernel height", kh),
                        ("kernel width", kw)):
        if value < 1:
            raise ValueError(f"{op}: {name} must be at least 1, got shapes x {tuple(x_shape)} "
                             f"and weight {tuple(weight_shape)}")
    ho, wo = output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: the {kh}x{kw} kernel does not fit the input: input {h}x{w} "
                         f"padded by {(ph, pw)} gives an output of {ho}x{wo}; expected at least "
                         f"1x1")
    # The kernels index their GEMMs (and one image) with int; element offsets are long long.
    for name, value in (("N * H_out * W_out", n * ho * wo), ("N * H * W", n * h * w),
                        ("C_in * kh * kw", c * kh * kw), ("C_out * kh * kw", o * kh * kw),
                        ("C_out * C_in * kh * kw", o * c * kh * kw)):
        if value > _INT_MAX:
            raise ValueError(f"{op}: {name} = {value} exceeds the kernels' int range "
                             f"({_INT_MAX}); split the batch")
    return n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo


def _scalars(geometry):
    return tuple(np.int32(v) for v in geometry)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, cache=None):
    """y = conv2d(x, weight) + bias: x [N, C_in, H, W], weight [C_out, C_in, kh, kw], bias
    [C_out] or None; returns y [N, C_out, H_out, W_out]. `cache`: see the module docstring."""
    op = "conv2d_forward"
    sizes = check_arrays(op, x=(x, ("N", "C_in", "H", "W")),
                         weight=(weight, ("C_out", "C_in", "kh", "kw")))
    if bias is not None:
        check_arrays(op, bound=sizes, weight=(weight, ("C_out", "C_in", "kh", "kw")),
                     bias=(bias, ("C_out",)))
    geometry = _geometry(op, x.shape, weight.shape, stride, padding)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo = geometry
    if not _device.runs_kernels():
        if cpu.fast(x, weight, bias):
            return cpu_conv.conv2d_forward(x, weight, bias, (sh, sw), (ph, pw), cache)
        return reference.conv2d_forward(x, weight, bias, (sh, sw), (ph, pw))
    y = _device.empty((n, o, ho, wo), x.dtype)
    if n:
        grid = (ceil_div(n * ho * wo, CONV_TILE_N), ceil_div(o, CONV_TILE_M))
        get_kernel("conv2d", "conv2d_forward")(grid, (CONV_THREADS,),
                                               (x, weight, bias, y) + _scalars(geometry))
    return y


def conv2d_backward_input(dy, weight, input_shape, stride=1, padding=0):
    """dx [N, C_in, H, W] (input_shape) from dy [N, C_out, H_out, W_out] and weight."""
    op = "conv2d_backward_input"
    check_arrays(op, weight=(weight, ("C_out", "C_in", "kh", "kw")))
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"{op}: input_shape must be (N, C_in, H, W), got {tuple(input_shape)}")
    input_shape = tuple(int(v) for v in input_shape)
    if input_shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: input_shape must have shape (N, C_in={weight.shape[1]}, H, W) "
                         f"for weight {tuple(weight.shape)}, got {input_shape}")
    geometry = _geometry(op, input_shape, weight.shape, stride, padding)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo = geometry
    check_arrays(op, dy=(dy, (n, o, ho, wo)), weight=(weight, None))
    if not _device.runs_kernels():
        if cpu.fast(dy, weight):
            return cpu_conv.conv2d_backward_input(dy, weight, input_shape, (sh, sw), (ph, pw))
        return reference.conv2d_backward_input(dy, weight, input_shape, (sh, sw), (ph, pw))
    if sh * sw > _GRID_Z_MAX:
        raise ValueError(f"{op}: stride {(sh, sw)} has {sh * sw} phases, more than the "
                         f"{_GRID_Z_MAX} grid slices the kernel runs them on")
    dx = _device.empty(input_shape, dy.dtype)
    if n:
        # One z-slice per stride phase; x covers the phase with the most pixels.
        grid = (ceil_div(n * ceil_div(h, sh) * ceil_div(w, sw), CONV_TILE_N),
                ceil_div(c, CONV_TILE_M), sh * sw)
        get_kernel("conv2d", "conv2d_backward_input")(grid, (CONV_THREADS,),
                                                      (dy, weight, dx) + _scalars(geometry))
    return dx


def weight_grad_splits(out_channels, taps, pixels):
    """(splits, split_len) for a weight gradient of C_out x (C_in kh kw) = out_channels x taps
    reduced over `pixels` = N H_out W_out: chunks of split_len pixels (a multiple of the
    kernel's 16-pixel step), from the shapes only."""
    tiles = ceil_div(out_channels, CONV_TILE_M) * ceil_div(taps, CONV_TILE_N)
    wanted = max(1, min(ceil_div(WEIGHT_GRAD_TARGET_BLOCKS, tiles),
                        ceil_div(pixels, WEIGHT_GRAD_MIN_SPLIT_LEN)))
    split_len = max(CONV_TILE_K, ceil_div(ceil_div(pixels, wanted), CONV_TILE_K) * CONV_TILE_K)
    return max(1, ceil_div(pixels, split_len)), split_len


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, out=None, splits=None,
                           cache=None):
    """dw [C_out, C_in, kh, kw] (weight_shape) from dy [N, C_out, H_out, W_out] and x
    [N, C_in, H, W]. `out`, when given, receives the result (a layer's gradient buffer).
    `cache`: what conv2d_forward kept (the module docstring).
    `splits`: how many chunks the N H_out W_out reduction is cut into (None: chosen from the
    shapes by weight_grad_splits); the chunks' partial sums are added in a fixed order."""
    op = "conv2d_backward_weight"
    weight_shape = tuple(int(v) for v in weight_shape)
    if len(weight_shape) != 4:
        raise ValueError(f"{op}: weight_shape must be (C_out, C_in, kh, kw), got {weight_shape}")
    sizes = check_arrays(op, x=(x, ("N", weight_shape[1], "H", "W")))
    geometry = _geometry(op, x.shape, weight_shape, stride, padding)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo = geometry
    check_arrays(op, bound=sizes, x=(x, None), dy=(dy, (n, o, ho, wo)))
    if out is not None:
        check_arrays(op, x=(x, None), out=(out, weight_shape))
    if splits is not None and int(splits) < 1:
        raise ValueError(f"{op}: splits must be at least 1, got {splits}")
    if not _device.runs_kernels():
        if cpu.fast(dy, x):
            return cpu_conv.conv2d_backward_weight(dy, x, weight_shape, (sh, sw), (ph, pw),
                                                   cache, out)
        return into(out, reference.conv2d_backward_weight(dy, x, weight_shape, (sh, sw),
                                                          (ph, pw)))
    if out is None:
        out = _device.empty(weight_shape, x.dtype)
    taps, pixels = c * kh * kw, n * ho * wo
    if splits is None:
        splits, split_len = weight_grad_splits(o, taps, pixels)
    else:
        splits = min(int(splits), _GRID_Z_MAX)
        split_len = max(CONV_TILE_K, ceil_div(ceil_div(pixels, splits), CONV_TILE_K)
                        * CONV_TILE_K)
        splits = max(1, ceil_div(pixels, split_len))
    grid = (ceil_div(taps, CONV_TILE_N), ceil_div(o, CONV_TILE_M), splits)
    partial = out if splits == 1 else _device.empty((splits,) + weight_shape, x.dtype)
    get_kernel("conv2d", "conv2d_backward_weight")(
        grid, (CONV_THREADS,), (dy, x, partial) + _scalars(geometry) + (np.int32(split_len),))
    if splits > 1:
        count = o * taps
        blocks = max(1, min(ceil_div(count, CONV_REDUCE_THREADS), 4096))
        get_kernel("conv2d", "conv2d_backward_weight_reduce")(
            (blocks,), (CONV_REDUCE_THREADS,), (partial, out, np.int32(splits), np.int32(count)))
    return out
