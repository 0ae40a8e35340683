"""2-D convolution, forward and both gradients, on kernels of our own (no cuDNN, no cuBLAS). The
maths is cupycnn/reference/conv2d.py, function for function; the algorithm, each kernel file's
header. This file launches the kernels.

A learner (docs/layers/conv.md's reading path) reads the first section, "kernels/conv2d.cu":
its three products' grids and the weight gradient's split count. The rest can wait: the public
ops (each checks its inputs, sends the numpy device to the CPU, picks the version, launches),
then the other versions' launches and the numpy device's path. The input checks:
ops/_conv2d_checks.py.

Each product exists as a progression of kernels (`version`; default: from the precision,
cupycnn.set_precision; ops/_launch.py's resolve_version):
    "direct"       kernels/conv2d_direct.cu: one thread per output, the definition (fp32)
    "tiled"        kernels/conv2d.cu: implicit GEMM, FP32 register tiles (fp32's default)
    "tensor_core"  kernels/conv2d_tc.cu: implicit GEMM on tensor cores (tf32's and bf16's
                   default), a tile configuration per shape from ops/tiles.py

Arguments as torch.nn.functional.conv2d with dilation 1 and groups 1: x [N, C_in, H, W], weight
[C_out, C_in, kh, kw], bias [C_out] or None, stride and padding an int or an (h, w) pair.
"""
import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import conv2d as cpu_conv
from ..cpu import elementwise as cpu_elementwise
from ..limits import GRID_YZ_MAX
from ..precision import get_precision
from ..reference import conv2d as reference
from ..runtime import ELEMENTWISE_MAX_BLOCKS, ceil_div, elementwise_grid, get_kernel
from . import tiles
from ._check import check_arrays, into
from ._conv2d_checks import (check_hyper_parameters, check_parameters,  # noqa: F401
                             checked_output_size, geometry as check_geometry, parameter_dtype)
from ._launch import TARGET_BLOCKS, VERSIONS, kernel_constants, resolve_version  # noqa: F401
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix, to_bf16, to_float32

# -------------------------------------------------------------------------- kernels/conv2d.cu

_CONV = kernel_constants("conv2d")       # its #defines, read from the source: written once
TILE_M, TILE_P, TILE_K = _CONV["CONV_TILE_M"], _CONV["CONV_TILE_P"], _CONV["CONV_TILE_K"]
THREADS, REDUCE_THREADS = _CONV["CONV_THREADS"], _CONV["CONV_REDUCE_THREADS"]
# No weight-gradient chunk shorter than this many output pixels: each chunk costs a partial tile
# written and read back.
WEIGHT_GRAD_MIN_SPLIT_LEN = 128


# Each product's launches, one per version, take the same arguments (the kernel's arguments, the
# activation, whose storage names the tensor-core entry point, and the geometry), so that an op
# picks its launch in one line.

def _scalars(geometry):
    """The kernels' int arguments after the arrays: N, C_in, H, W, C_out, kh, kw, sh, sw, ph,
    pw, H_out, W_out."""
    return tuple(np.int32(v) for v in geometry)


def _tiled_forward(args, x, geometry):
    """A block per 64 x 64 tile of y seen as the C_out x (N H_out W_out) result."""
    n, _, _, _, o, *_, ho, wo = geometry
    grid = (ceil_div(n * ho * wo, TILE_P), ceil_div(o, TILE_M))
    get_kernel("conv2d", "conv2d_forward")(grid, (THREADS,), args)


def _largest_phase(geometry):
    """The input pixels of the largest stride phase: N ceil(H / sh) ceil(W / sw)."""
    n, _, h, w, _, _, _, sh, sw, *_ = geometry
    return n * ceil_div(h, sh) * ceil_div(w, sw)


def _tiled_backward_input(args, dy, geometry):
    """A block per tile of a stride phase's C_in x pixels result; z: one slice per phase, each
    sized for the largest phase."""
    _, c, _, _, _, _, _, sh, sw, *_ = geometry
    grid = (ceil_div(_largest_phase(geometry), TILE_P), ceil_div(c, TILE_M), sh * sw)
    get_kernel("conv2d", "conv2d_backward_input")(grid, (THREADS,), args)


def weight_grad_splits(out_channels, taps, pixels, splits=None, tile=(TILE_M, TILE_P, TILE_K)):
    """(splits, split_len) for a weight gradient of C_out x (C_in kh kw) = out_channels x taps
    reduced over `pixels` = N H_out W_out by a kernel of (tile_m, tile_p, step) = `tile`
    (default: conv2d.cu's): chunks of split_len pixels, a multiple of the kernel's step.
    `splits` asks for a count; None chooses it from the shapes alone: enough chunks for about
    TARGET_BLOCKS blocks, none shorter than WEIGHT_GRAD_MIN_SPLIT_LEN. Since splits x tiles stays
    below 2 TARGET_BLOCKS tiles of 16 KB, the workspace stays under 17 MB."""
    tile_m, tile_p, step = tile
    if splits is None:
        blocks = ceil_div(out_channels, tile_m) * ceil_div(taps, tile_p)
        splits = max(1, min(ceil_div(TARGET_BLOCKS, blocks),
                            ceil_div(pixels, WEIGHT_GRAD_MIN_SPLIT_LEN)))
    splits = min(int(splits), GRID_YZ_MAX)
    split_len = max(step, ceil_div(ceil_div(pixels, splits), step) * step)
    return max(1, ceil_div(pixels, split_len)), split_len


def _split_backward_weight(kernel, tile, threads, dy, x, out, geometry, splits):
    """Run a weight-gradient kernel of `tile` (tile_m, tile_p, step) over the chunks of
    weight_grad_splits, each into its own slice of a workspace (with one chunk: `out` itself),
    then conv2d_backward_weight_reduce adds the slices in split order (a fixed order: the same
    bits on every run). Grid: a block per tile of C_out x (C_in kh kw); z: one slice per chunk."""
    n, c, _, _, o, kh, kw, _, _, _, _, ho, wo = geometry
    taps = c * kh * kw
    splits, split_len = weight_grad_splits(o, taps, n * ho * wo, splits, tile)
    grid = (ceil_div(taps, tile[1]), ceil_div(o, tile[0]), splits)
    partial = out if splits == 1 else _device.empty((splits,) + tuple(out.shape), out.dtype)
    kernel(grid, (threads,), (dy, x, partial) + _scalars(geometry) + (np.int32(split_len),))
    if splits > 1:
        count = o * taps
        blocks = max(1, min(ceil_div(count, REDUCE_THREADS), ELEMENTWISE_MAX_BLOCKS))   # grid-stride
        get_kernel("conv2d", "conv2d_backward_weight_reduce")(
            (blocks,), (REDUCE_THREADS,), (partial, out, np.int32(splits), np.int32(count)))


def _tiled_backward_weight(dy, x, out, geometry, splits):
    _split_backward_weight(get_kernel("conv2d", "conv2d_backward_weight"),
                           (TILE_M, TILE_P, TILE_K), THREADS, dy, x, out, geometry, splits)


# ---------------------------------------------------------------------------- the public ops

def conv2d_forward(x, weight, bias=None, stride=1, padding=0, version=None, residual=None,
                   relu=False, cache=None):
    """y = conv2d(x, weight) + bias: x [N, C_in, H, W], weight [C_out, C_in, kh, kw], bias
    [C_out] or None; returns y [N, C_out, H_out, W_out]. `version`: see the module's doc;
    `cache`: a dict a layer keeps from its training forward to its backward, in which the numpy
    device's CPU path leaves the im2col columns for the weight gradient (the kernels ignore it).
    The epilogue, in the same pass: + residual (the shape of y), then max(y, 0) when relu:
    conv + bias (+ residual) + ReLU, the inference path of a ResNet with its batchnorms folded
    into the convolutions (models.fold_batchnorm)."""
    op = "conv2d_forward"
    sizes = check_arrays(op, dtypes=activation_dtypes(), x=(x, ("N", "C_in", "H", "W")))
    check_parameters(op, "x", x, sizes, weight=(weight, ("C_out", "C_in", "kh", "kw")),
                     **({} if bias is None else {"bias": (bias, ("C_out",))}))
    geometry = check_geometry(op, x.shape, weight.shape, stride, padding)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo = geometry
    if residual is not None:
        check_arrays(op, dtypes=activation_dtypes(), x=(x, None),
                     residual=(residual, (n, o, ho, wo)))
    if not _device.runs_kernels():
        args = (x, weight, bias, (sh, sw), (ph, pw), residual, relu, cache)
        return reference_bf16(_numpy_forward, *args) if is_bf16(x) else _numpy_forward(*args)
    version = resolve_version(op, version)
    if is_bf16(x) and version != "tensor_core":     # kernels of float storage: float32 copies
        return to_bf16(conv2d_forward(to_float32(x), weight, bias, stride, padding, version,
                                      _float32(residual), relu))
    y = _device.empty((n, o, ho, wo), x.dtype)
    if not n:
        return y
    args = (x, weight, bias, residual, np.int32(bool(relu)), y) + _scalars(geometry)
    launch = {"direct": _direct_forward, "tiled": _tiled_forward,
              "tensor_core": _tensor_core_forward}[version]
    launch(args, x, geometry)
    return y


def conv2d_backward_input(dy, weight, input_shape, stride=1, padding=0, version=None):
    """dx [N, C_in, H, W] (input_shape) from dy [N, C_out, H_out, W_out] and weight."""
    op = "conv2d_backward_input"
    check_arrays(op, dtypes=activation_dtypes(), dy=(dy, None))
    check_parameters(op, "dy", dy, weight=(weight, ("C_out", "C_in", "kh", "kw")))
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"{op}: input_shape must be (N, C_in, H, W), got {tuple(input_shape)}")
    input_shape = tuple(int(v) for v in input_shape)
    if input_shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: input_shape must have shape (N, C_in={weight.shape[1]}, H, W) "
                         f"for weight {tuple(weight.shape)}, got {input_shape}")
    geometry = check_geometry(op, input_shape, weight.shape, stride, padding)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo = geometry
    check_arrays(op, dtypes=activation_dtypes(), dy=(dy, (n, o, ho, wo)))
    if not _device.runs_kernels():
        args = (dy, weight, input_shape, (sh, sw), (ph, pw))
        return reference_bf16(_numpy_backward_input, *args) if is_bf16(dy) else \
            _numpy_backward_input(*args)
    if sh * sw > GRID_YZ_MAX:
        raise ValueError(f"{op}: stride {(sh, sw)} has {sh * sw} phases, more than the "
                         f"{GRID_YZ_MAX} grid slices the kernel runs them on")
    version = resolve_version(op, version)
    if is_bf16(dy) and version != "tensor_core":
        return to_bf16(conv2d_backward_input(to_float32(dy), weight, input_shape, stride,
                                             padding, version))
    dx = _device.empty(input_shape, dy.dtype)
    if not n:
        return dx
    launch = {"direct": _direct_backward_input, "tiled": _tiled_backward_input,
              "tensor_core": _tensor_core_backward_input}[version]
    launch((dy, weight, dx) + _scalars(geometry), dy, geometry)
    return dx


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, out=None, splits=None,
                           version=None, cache=None):
    """dw [C_out, C_in, kh, kw] (weight_shape) from dy [N, C_out, H_out, W_out] and x
    [N, C_in, H, W]. `out`, when given, receives the result (a layer's gradient buffer).
    `cache`: what conv2d_forward kept (its docstring).
    `splits`: how many chunks the N H_out W_out reduction is cut into (None: chosen from the
    shapes by weight_grad_splits); the chunks' partial sums are added in a fixed order."""
    op = "conv2d_backward_weight"
    weight_shape = tuple(int(v) for v in weight_shape)
    if len(weight_shape) != 4:
        raise ValueError(f"{op}: weight_shape must be (C_out, C_in, kh, kw), got {weight_shape}")
    sizes = check_arrays(op, dtypes=activation_dtypes(),
                         x=(x, ("N", weight_shape[1], "H", "W")))
    geometry = check_geometry(op, x.shape, weight_shape, stride, padding)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo = geometry
    check_arrays(op, bound=sizes, dtypes=activation_dtypes(), x=(x, None),
                 dy=(dy, (n, o, ho, wo)))
    if out is not None:
        check_parameters(op, "x", x, out=(out, weight_shape))
    if splits is not None and int(splits) < 1:
        raise ValueError(f"{op}: splits must be at least 1, got {splits}")
    if not _device.runs_kernels():
        args = (dy, x, weight_shape, (sh, sw), (ph, pw), cache, out)
        return reference_bf16(_numpy_backward_weight, *args, outputs=0) if is_bf16(x) else \
            _numpy_backward_weight(*args)
    version = resolve_version(op, version)
    if is_bf16(x) and version != "tensor_core":
        return conv2d_backward_weight(to_float32(dy), to_float32(x), weight_shape, stride,
                                      padding, out, splits, version)
    if out is None:
        out = _device.empty(weight_shape, parameter_dtype(x))
    launch = {"direct": _direct_backward_weight, "tiled": _tiled_backward_weight,
              "tensor_core": _tensor_core_backward_weight}[version]
    launch(dy, x, out, geometry, splits)
    return out


# ------------------------------------------- the other versions: direct and tensor_core

def _direct(name, count, args):
    """kernels/conv2d_direct.cu: one thread per output element."""
    grid, block = elementwise_grid(count)
    get_kernel("conv2d_direct", name)(grid, block, args)


def _direct_forward(args, x, geometry):
    n, _, _, _, o, *_, ho, wo = geometry
    _direct("conv2d_direct_forward", n * o * ho * wo, args)


def _direct_backward_input(args, dy, geometry):
    n, c, h, w, *_ = geometry
    _direct("conv2d_direct_backward_input", n * c * h * w, args)


def _direct_backward_weight(dy, x, out, geometry, splits):   # one thread per element: no split
    _, c, _, _, o, kh, kw, *_ = geometry
    _direct("conv2d_direct_backward_weight", o * c * kh * kw, (dy, x, out) + _scalars(geometry))


# kernels/conv2d_tc.cu reads and writes BF16 storage itself (its _bf16 entry points: `suffix`);
# the direct and tiled kernels store float only, so on BF16 storage the ops above run them on
# float32 copies. Either way the result is the float32 op's on the decoded inputs, rounded once
# (tests/test_bf16.py). The tile configuration, per shape: ops/tiles.py.

def _tensor_core_forward(args, x, geometry):
    n, _, _, _, o, *_, ho, wo = geometry
    tile = tiles.choose_tile(o, n * ho * wo)
    grid = (ceil_div(n * ho * wo, tile.bn), ceil_div(o, tile.bm))
    get_kernel("conv2d_tc", "conv2d_tc_forward" + suffix(x), tile.defines(get_precision()))(
        grid, (tile.threads,), args)


def _tensor_core_backward_input(args, dy, geometry):
    _, c, _, _, _, _, _, sh, sw, *_ = geometry
    phase_pixels = _largest_phase(geometry)
    tile = tiles.choose_tile(c, phase_pixels, sh * sw)
    grid = (ceil_div(phase_pixels, tile.bn), ceil_div(c, tile.bm), sh * sw)
    get_kernel("conv2d_tc", "conv2d_tc_backward_input" + suffix(dy),
               tile.defines(get_precision()))(grid, (tile.threads,), args)


def _tensor_core_backward_weight(dy, x, out, geometry, splits):
    _, c, _, _, o, kh, kw, *_ = geometry
    tile = tiles.choose_tile(o, c * kh * kw)
    kernel = get_kernel("conv2d_tc", "conv2d_tc_backward_weight" + suffix(x),
                        tile.defines(get_precision()))
    _split_backward_weight(kernel, (tile.bm, tile.bn, tile.bk), tile.threads, dy, x, out,
                           geometry, splits)


def _float32(a):
    return None if a is None else to_float32(a)


# -------------------------------------------------------------- the numpy device (no kernels)
# Float32 runs go to cupycnn/cpu/conv2d.py (the same maths, arranged for speed; `cache` lets it
# reuse the forward's im2col columns for the weight gradient), the rest to the reference.

def _numpy_forward(x, weight, bias, stride, padding, residual, relu, cache):
    if cpu.fast(x, weight, bias, residual):
        y = cpu_conv.conv2d_forward(x, weight, bias, stride, padding, cache, get_precision())
        # The epilogue as the kernels' order has it, in place: + residual, then ReLU.
        if residual is not None:
            cpu_elementwise.add(y, residual, out=y)
        return cpu_elementwise.relu_forward(y) if relu else y
    return reference.conv2d_forward(x, weight, bias, stride, padding, get_precision(),
                                    residual=residual, relu=relu)


def _numpy_backward_input(dy, weight, input_shape, stride, padding):
    path = cpu_conv if cpu.fast(dy, weight) else reference
    return path.conv2d_backward_input(dy, weight, input_shape, stride, padding, get_precision())


def _numpy_backward_weight(dy, x, weight_shape, stride, padding, cache, out):
    if cpu.fast(dy, x):
        return cpu_conv.conv2d_backward_weight(dy, x, weight_shape, stride, padding, cache, out,
                                               get_precision())
    return into(out, reference.conv2d_backward_weight(dy, x, weight_shape, stride, padding,
                                                      get_precision()))
