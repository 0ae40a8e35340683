"""The convolution that also gives the statistics of the batchnorm reading its output: in
training, a Conv2D feeding a BatchNorm2D (layers.Conv2D.feed_statistics_to) would otherwise have
the batchnorm read all of y once more, for its per-channel (sum y, sum y^2) alone
(batchnorm_stats, stage 1 of ops/batchnorm.py). Here the convolution's epilogue adds them up
while y is still in registers.

    y, sums = conv2d_forward_statistics(x, weight, bias, stride, padding)
    # y = conv2d_forward(x, weight, bias, stride, padding), bit for bit;
    # sums [C_out, 2] float64: (sum y, sum y^2) per channel of y as stored, what
    # batchnorm_stats(y) gives up to the order of the additions

The tensor-core kernels (precision tf32, bf16: conv2d_tc_forward_stats(_bf16)) and the tiled
FP32 kernel (fp32: conv2d.cu's conv2d_forward_stats) write each block's sums per output channel
into a [C_out, blocks along the pixels, 2] workspace (a fixed order inside the block:
tc_tile.cuh tc_epilogue_row_sums; a half-warp butterfly), and batchnorm_combine_partials adds the
blocks in a fixed order: the same bits whatever order the blocks run in, but not
batchnorm_stats' bits, whose split of a channel is another (double rounding: a relative 1e-16
per addition). The direct kernels, the tiled ones on BF16 storage (float32 copies: precision
fp32, which the trainer never gives BF16) and the numpy device have no such epilogue: they run
the convolution, then batchnorm_stats(y), the unfused composition itself.
"""
import numpy as np

from .. import devices as _device
from ..precision import get_precision
from ..runtime import ceil_div, get_kernel
from . import batchnorm as bn_ops
from . import conv2d as conv_ops
from . import tiles
from ._check import check_arrays, check_int32
from ._storage import activation_dtypes, is_bf16, suffix


def conv2d_forward_statistics(x, weight, bias=None, stride=1, padding=0, version=None,
                              cache=None):
    """(y, sums): y = conv2d_forward(x, weight, bias, stride, padding, version, cache=cache) and
    sums [C_out, 2] float64, (sum y, sum y^2) per output channel (the module's doc)."""
    op = "conv2d_forward_statistics"
    version = conv_ops.resolve_version(op, version) if _device.runs_kernels() else None
    if version not in ("tiled", "tensor_core") or (version == "tiled" and is_bf16(x)) \
            or not x.shape[0]:
        y = conv_ops.conv2d_forward(x, weight, bias, stride, padding, version, cache=cache)
        return y, bn_ops.batchnorm_stats(y)
    check_arrays(op, dtypes=activation_dtypes(), x=(x, ("N", "C_in", "H", "W")))
    sizes = check_arrays(op, dtypes=(np.float32,), weight=(weight, ("C_out", None, "kh", "kw")),
                         **({} if bias is None else {"bias": (bias, ("C_out",))}))
    n, c, h, w = (int(v) for v in x.shape)
    o, kh, kw = sizes["C_out"], sizes["kh"], sizes["kw"]
    if weight.shape[1] != c:
        raise ValueError(f"{op}: weight must have shape ({o}, C_in={c}, {kh}, {kw}) for x "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    _, (sh, sw), (ph, pw) = conv_ops.check_hyper_parameters(op, c, o, (kh, kw), stride, padding)
    ho, wo = conv_ops.checked_output_size(op, h, w, (kh, kw), (sh, sw), (ph, pw))
    pixels = n * ho * wo
    check_int32(op, pixels=pixels, taps=c * kh * kw, x_elements=n * c * h * w,
                y_elements=pixels * o)
    y = _device.empty((n, o, ho, wo), x.dtype)
    sums = _device.empty((o, 2), np.float64)
    if version == "tiled":
        (bm, bn), threads = (conv_ops.TILE_M, conv_ops.TILE_P), conv_ops.THREADS
        kernel = get_kernel("conv2d", "conv2d_forward_stats")
    else:
        tile = tiles.choose_tile(o, pixels)
        (bm, bn), threads = (tile.bm, tile.bn), tile.threads
        kernel = get_kernel("conv2d_tc", "conv2d_tc_forward_stats" + suffix(x),
                            tile.defines(get_precision()))
    grid = (ceil_div(pixels, bn), ceil_div(o, bm))
    # One block along the pixels writes the sums themselves ([C_out, 1, 2] is [C_out, 2]).
    partial = sums if grid[0] == 1 else _device.empty((o, grid[0], 2), np.float64)
    kernel(grid, (threads,), (x, weight, bias, y, partial) + tuple(
        np.int32(v) for v in (n, c, h, w, o, kh, kw, sh, sw, ph, pw, ho, wo)))
    if grid[0] > 1:
        bn_ops.combine_partials(partial, out=sums)
    return y, sums


__all__ = ["conv2d_forward_statistics"]
