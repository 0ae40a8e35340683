"""2-D convolution, forward and both gradients, on kernels of our own (no cuDNN, no cuBLAS).
Specified by cupycnn/reference/conv2d.py, function for function.

Each product exists as a progression of kernels (`version`; default: from the precision,
cupycnn.set_precision):
    "direct"       kernels/conv2d_direct.cu: one thread per output, the definition (fp32)
    "tiled"        kernels/conv2d.cu: implicit GEMM, FP32 register tiles (fp32; the default)
    "tensor_core"  kernels/conv2d_tc.cu: implicit GEMM on tensor cores, cp.async pipeline,
                   ldmatrix, mma.sync (tf32 or bf16; the default at those precisions), with a
                   tile configuration per shape from ops/tiles.py

Semantics of torch.nn.functional.conv2d with dilation 1 and groups 1: x [N, C_in, H, W],
weight [C_out, C_in, kh, kw], bias [C_out] or None, stride and padding an int or an (h, w)
pair, zero padding, y [N, C_out, H_out, W_out], H_out = (H + 2 pad_h - kh) // stride_h + 1.
The bias gradient is ops.reduce.channel_sum(dy).
"""
import numpy as np

from .. import devices as _device
from ..precision import get_precision
from ..reference import conv2d as reference
from ..reference.conv2d import output_size, pair
from ..runtime import ceil_div, elementwise_grid, get_kernel
from . import tiles
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


VERSIONS = ("direct", "tiled", "tensor_core")


def resolve_version(op, version):
    """The kernel version to run at the current precision: `version`, checked against it, or
    the precision's default (fp32: "tiled"; tf32, bf16: "tensor_core")."""
    precision = get_precision()
    if version is None:
        return "tiled" if precision == "fp32" else "tensor_core"
    if version not in VERSIONS:
        raise ValueError(f"{op}: version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if (version == "tensor_core") != (precision != "fp32"):
        raise ValueError(f"{op}: the {version} kernels compute in "
                         f"{'tf32 or bf16' if version == 'tensor_core' else 'fp32'}, but the "
                         f"precision is {precision} (cupycnn.set_precision)")
    return version


def _direct(name, count, args):
    grid, block = elementwise_grid(count)
    get_kernel("conv2d_direct", name)(grid, block, args)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, version=None):
    """y = conv2d(x, weight) + bias: x [N, C_in, H, W], weight [C_out, C_in, kh, kw], bias
    [C_out] or None; returns y [N, C_out, H_out, W_out]. `version`: see the module's doc."""
    op = "conv2d_forward"
    sizes = check_arrays(op, x=(x, ("N", "C_in", "H", "W")),
                         weight=(weight, ("C_out", "C_in", "kh", "kw")))
    if bias is not None:
        check_arrays(op, bound=sizes, weight=(weight, ("C_out", "C_in", "kh", "kw")),
                     bias=(bias, ("C_out",)))
    geometry = _geometry(op, x.shape, weight.shape, stride, padding)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo = geometry
    if not _device.runs_kernels():
        return reference.conv2d_forward(x, weight, bias, (sh, sw), (ph, pw), get_precision())
    version = resolve_version(op, version)
    y = _device.empty((n, o, ho, wo), x.dtype)
    if not n:
        return y
    args = (x, weight, bias, y) + _scalars(geometry)
    if version == "direct":
        _direct("conv2d_direct_forward", n * o * ho * wo, args)
    elif version == "tiled":
        grid = (ceil_div(n * ho * wo, CONV_TILE_N), ceil_div(o, CONV_TILE_M))
        get_kernel("conv2d", "conv2d_forward")(grid, (CONV_THREADS,), args)
    else:
        tile = tiles.choose_tile(o, n * ho * wo)
        grid = (ceil_div(n * ho * wo, tile.bn), ceil_div(o, tile.bm))
        get_kernel("conv2d_tc", "conv2d_tc_forward", tile.defines(get_precision()))(
            grid, (tile.threads,), args)
    return y


def conv2d_backward_input(dy, weight, input_shape, stride=1, padding=0, version=None):
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
        return reference.conv2d_backward_input(dy, weight, input_shape, (sh, sw), (ph, pw),
                                               get_precision())
    if sh * sw > _GRID_Z_MAX:
        raise ValueError(f"{op}: stride {(sh, sw)} has {sh * sw} phases, more than the "
                         f"{_GRID_Z_MAX} grid slices the kernel runs them on")
    version = resolve_version(op, version)
    dx = _device.empty(input_shape, dy.dtype)
    if not n:
        return dx
    args = (dy, weight, dx) + _scalars(geometry)
    phase_pixels = n * ceil_div(h, sh) * ceil_div(w, sw)   # the phase with the most pixels
    if version == "direct":
        _direct("conv2d_direct_backward_input", n * c * h * w, args)
    elif version == "tiled":    # one z-slice per stride phase
        grid = (ceil_div(phase_pixels, CONV_TILE_N), ceil_div(c, CONV_TILE_M), sh * sw)
        get_kernel("conv2d", "conv2d_backward_input")(grid, (CONV_THREADS,), args)
    else:
        tile = tiles.choose_tile(c, phase_pixels, sh * sw)
        grid = (ceil_div(phase_pixels, tile.bn), ceil_div(c, tile.bm), sh * sw)
        get_kernel("conv2d_tc", "conv2d_tc_backward_input", tile.defines(get_precision()))(
            grid, (tile.threads,), args)
    return dx


def weight_grad_splits(out_channels, taps, pixels, tile=(CONV_TILE_M, CONV_TILE_N, CONV_TILE_K)):
    """(splits, split_len) for a weight gradient of C_out x (C_in kh kw) = out_channels x taps
    reduced over `pixels` = N H_out W_out: chunks of split_len pixels (a multiple of the
    kernel's reduction step), from the shapes and the (tile_m, tile_n, step) of the kernel."""
    tile_m, tile_n, step = tile
    blocks = ceil_div(out_channels, tile_m) * ceil_div(taps, tile_n)
    wanted = max(1, min(ceil_div(WEIGHT_GRAD_TARGET_BLOCKS, blocks),
                        ceil_div(pixels, WEIGHT_GRAD_MIN_SPLIT_LEN)))
    split_len = max(step, ceil_div(ceil_div(pixels, wanted), step) * step)
    return max(1, ceil_div(pixels, split_len)), split_len


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, out=None, splits=None,
                           version=None):
    """dw [C_out, C_in, kh, kw] (weight_shape) from dy [N, C_out, H_out, W_out] and x
    [N, C_in, H, W]. `out`, when given, receives the result (a layer's gradient buffer).
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
        return into(out, reference.conv2d_backward_weight(dy, x, weight_shape, (sh, sw),
                                                          (ph, pw), get_precision()))
    version = resolve_version(op, version)
    if out is None:
        out = _device.empty(weight_shape, x.dtype)
    taps, pixels = c * kh * kw, n * ho * wo
    if version == "direct":
        _direct("conv2d_direct_backward_weight", o * taps, (dy, x, out) + _scalars(geometry))
        return out
    if version == "tiled":
        tile_m, tile_n, step, threads = CONV_TILE_M, CONV_TILE_N, CONV_TILE_K, CONV_THREADS
        kernel = get_kernel("conv2d", "conv2d_backward_weight")
    else:
        tile = tiles.choose_tile(o, taps)
        tile_m, tile_n, step, threads = tile.bm, tile.bn, tile.bk, tile.threads
        kernel = get_kernel("conv2d_tc", "conv2d_tc_backward_weight",
                            tile.defines(get_precision()))
    if splits is None:
        splits, split_len = weight_grad_splits(o, taps, pixels, (tile_m, tile_n, step))
    else:
        splits = min(int(splits), _GRID_Z_MAX)
        split_len = max(step, ceil_div(ceil_div(pixels, splits), step) * step)
        splits = max(1, ceil_div(pixels, split_len))
    grid = (ceil_div(taps, tile_n), ceil_div(o, tile_m), splits)
    partial = out if splits == 1 else _device.empty((splits,) + weight_shape, x.dtype)
    kernel(grid, (threads,), (dy, x, partial) + _scalars(geometry) + (np.int32(split_len),))
    if splits > 1:
        count = o * taps
        blocks = max(1, min(ceil_div(count, CONV_REDUCE_THREADS), 4096))
        get_kernel("conv2d", "conv2d_backward_weight_reduce")(
            (blocks,), (CONV_REDUCE_THREADS,), (partial, out, np.int32(splits), np.int32(count)))
    return out
