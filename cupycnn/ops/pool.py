"""Max, average and global average pooling: launches kernels/pool.cu, specified by
reference/pool.py.

Arguments follow PyTorch's `F.max_pool2d` / `F.avg_pool2d`: kernel_size, stride and padding are
an int or an (height, width) pair, stride defaults to kernel_size, padding is at most half the
kernel, the output size is floored (ceil_mode=False), no dilation; average pooling counts the
padding (count_include_pad=True). Input is NCHW, 4-D.
"""
import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import pool as cpu_pool
from ..limits import INT32_MAX
from ..reference import pool as reference
from ..runtime import ELEMENTWISE_MAX_BLOCKS, ceil_div, get_kernel
from ._check import check_arrays, shown
from ._launch import kernel_constants
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix

_K = kernel_constants("pool")
POOL_THREADS = _K["POOL_THREADS"]
GLOBAL_POOL_PLANES_PER_BLOCK = _K["GLOBAL_POOL_PLANES_PER_BLOCK"]        # one warp per plane


def _int_pair(op, name, value):
    values = value if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                   for v in values):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints (height, width), got "
                         f"{shown(value)}")
    return int(values[0]), int(values[1])


def pool_arguments(op, kernel_size, stride=None, padding=0):
    """Check PyTorch-style pooling arguments; returns ((kh, kw), (sh, sw), (ph, pw))."""
    kernel = _int_pair(op, "kernel_size", kernel_size)
    stride = kernel if stride is None else _int_pair(op, "stride", stride)
    padding = _int_pair(op, "padding", padding)
    if min(kernel) < 1:
        raise ValueError(f"{op}: kernel_size must be positive, got {kernel_size!r}")
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be positive, got {stride!r}")
    if max(*kernel, *stride, *padding) > INT32_MAX:      # the kernels take them as int
        raise ValueError(f"{op}: kernel_size, stride and padding must stay below 2^31, got "
                         f"kernel_size={kernel_size!r}, stride={stride!r}, padding={padding!r}")
    if min(padding) < 0 or padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding must be between 0 and half the kernel size (as "
                         f"PyTorch), got padding={padding!r} for kernel_size={kernel!r}")
    return kernel, stride, padding


def pool_output_size(op, input_size, kernel, stride, padding):
    """(OH, OW) for an (H, W) input; a ValueError when the input is smaller than the kernel."""
    out = reference.output_size(input_size, kernel, stride, padding)
    if min(out) < 1:
        raise ValueError(f"{op}: input of spatial size {tuple(input_size)} is too small for "
                         f"kernel_size={kernel}, padding={padding}: the output would be "
                         f"{tuple(out)}")
    return out


def _check_int_sizes(op, planes, *plane_sizes):
    """The kernels index one plane in int and count planes in int."""
    if planes > INT32_MAX or max(plane_sizes) > INT32_MAX:
        raise ValueError(f"{op}: N * C = {planes} and every plane's size {plane_sizes} must "
                         f"stay below 2^31")


def _grid(n):
    return (max(1, min(ceil_div(n, POOL_THREADS), ELEMENTWISE_MAX_BLOCKS)),)


def _geometry_args(planes, input_size, out, kernel, stride, padding):
    return tuple(np.int32(v) for v in (planes, *input_size, *out, *kernel, *stride, *padding))


def _setup(op, x, kernel_size, stride, padding):
    kernel, stride, padding = pool_arguments(op, kernel_size, stride, padding)
    sizes = check_arrays(op, dtypes=activation_dtypes(), x=(x, ("N", "C", "H", "W")))
    input_size = (sizes["H"], sizes["W"])
    out = pool_output_size(op, input_size, kernel, stride, padding)
    planes = sizes["N"] * sizes["C"]
    _check_int_sizes(op, planes, input_size[0] * input_size[1], out[0] * out[1])
    return (kernel, stride, padding), input_size, out, planes


def _setup_backward(op, dy, input_size, kernel_size, stride, padding):
    kernel, stride, padding = pool_arguments(op, kernel_size, stride, padding)
    input_size = _int_pair(op, "input_size", input_size)
    out = pool_output_size(op, input_size, kernel, stride, padding)
    sizes = check_arrays(op, dtypes=activation_dtypes(), dy=(dy, ("N", "C") + tuple(out)))
    planes = sizes["N"] * sizes["C"]
    _check_int_sizes(op, planes, input_size[0] * input_size[1], out[0] * out[1])
    return (kernel, stride, padding), input_size, out, sizes


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x [N, C, H, W] -> (y [N, C, OH, OW], argmax [N, C, OH, OW] int32): each window's maximum
    and the flat index ih * W + iw of its first maximum in the input plane."""
    op = "max_pool2d_forward"
    geometry, input_size, out, planes = _setup(op, x, kernel_size, stride, padding)
    if not _device.runs_kernels():
        fn = cpu_pool.max_pool2d_forward if cpu.fast(x) else reference.max_pool2d_forward
        return reference_bf16(fn, x, *geometry) if is_bf16(x) else fn(x, *geometry)
    n, c = x.shape[:2]
    y = _device.empty((n, c) + out, x.dtype)
    argmax = _device.empty((n, c) + out, np.int32)
    if y.size:
        get_kernel("pool", "max_pool2d_forward" + suffix(x))(
            _grid(y.size), (POOL_THREADS,),
            (x, y, argmax) + _geometry_args(planes, input_size, out, *geometry))
    return y, argmax


def max_pool2d_backward(dy, argmax, input_size, kernel_size, stride=None, padding=0):
    """dx [N, C, H, W]: every dy[oh, ow] added to the input element argmax[oh, ow] points at.
    input_size: the forward input's (H, W)."""
    op = "max_pool2d_backward"
    geometry, input_size, out, sizes = _setup_backward(op, dy, input_size, kernel_size, stride,
                                                       padding)
    check_arrays(op, bound=sizes, dtypes=(np.int32,), argmax=(argmax, ("N", "C") + tuple(out)))
    if not _device.runs_kernels():
        if cpu.fast(dy):
            fn, args = cpu_pool.max_pool2d_backward, (dy, argmax, input_size, *geometry)
        else:
            fn, args = reference.max_pool2d_backward, (dy, argmax, input_size)
        return reference_bf16(fn, *args) if is_bf16(dy) else fn(*args)
    n, c = sizes["N"], sizes["C"]
    dx = _device.empty((n, c) + input_size, dy.dtype)
    if dx.size:
        get_kernel("pool", "max_pool2d_backward" + suffix(dy))(
            _grid(dx.size), (POOL_THREADS,),
            (dy, argmax, dx) + _geometry_args(n * c, input_size, out, *geometry))
    return dx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x [N, C, H, W] -> y [N, C, OH, OW]: each window's sum divided by kh * kw (padding counts
    as zeros)."""
    op = "avg_pool2d_forward"
    geometry, input_size, out, planes = _setup(op, x, kernel_size, stride, padding)
    if not _device.runs_kernels():
        if is_bf16(x):
            return reference_bf16(reference.avg_pool2d_forward, x, *geometry)
        return reference.avg_pool2d_forward(x, *geometry)
    y = _device.empty(x.shape[:2] + out, x.dtype)
    if y.size:
        get_kernel("pool", "avg_pool2d_forward" + suffix(x))(
            _grid(y.size), (POOL_THREADS,),
            (x, y) + _geometry_args(planes, input_size, out, *geometry))
    return y


def avg_pool2d_backward(dy, input_size, kernel_size, stride=None, padding=0):
    """dx [N, C, H, W]: the sum of dy over the windows covering each element, over kh * kw.
    input_size: the forward input's (H, W)."""
    op = "avg_pool2d_backward"
    geometry, input_size, out, sizes = _setup_backward(op, dy, input_size, kernel_size, stride,
                                                       padding)
    if not _device.runs_kernels():
        if is_bf16(dy):
            return reference_bf16(reference.avg_pool2d_backward, dy, input_size, *geometry)
        return reference.avg_pool2d_backward(dy, input_size, *geometry)
    n, c = sizes["N"], sizes["C"]
    dx = _device.empty((n, c) + input_size, dy.dtype)
    if dx.size:
        get_kernel("pool", "avg_pool2d_backward" + suffix(dy))(
            _grid(dx.size), (POOL_THREADS,),
            (dy, dx) + _geometry_args(n * c, input_size, out, *geometry))
    return dx


def global_avg_pool2d_forward(x):
    """x [N, C, H, W] -> y [N, C], the mean of every plane."""
    op = "global_avg_pool2d_forward"
    sizes = check_arrays(op, dtypes=activation_dtypes(), x=(x, ("N", "C", "H", "W")))
    planes, plane_size = sizes["N"] * sizes["C"], sizes["H"] * sizes["W"]
    if plane_size < 1:
        raise ValueError(f"{op}: x must have a non-empty plane, got shape {tuple(x.shape)}")
    _check_int_sizes(op, planes, plane_size)
    if not _device.runs_kernels():
        if is_bf16(x):
            return reference_bf16(reference.global_avg_pool2d_forward, x)
        return reference.global_avg_pool2d_forward(x)
    y = _device.empty(x.shape[:2], x.dtype)
    if planes:
        get_kernel("pool", "global_avg_pool2d_forward" + suffix(x))(
            (ceil_div(planes, GLOBAL_POOL_PLANES_PER_BLOCK),), (POOL_THREADS,),
            (x, y, np.int32(planes), np.int32(plane_size)))
    return y


def global_avg_pool2d_backward(dy, input_size):
    """dy [N, C] -> dx [N, C, H, W] = dy / (H * W) over each plane."""
    op = "global_avg_pool2d_backward"
    input_size = _int_pair(op, "input_size", input_size)
    if min(input_size) < 1:
        raise ValueError(f"{op}: input_size must be positive, got {input_size}")
    sizes = check_arrays(op, dtypes=activation_dtypes(), dy=(dy, ("N", "C")))
    planes, plane_size = sizes["N"] * sizes["C"], input_size[0] * input_size[1]
    _check_int_sizes(op, planes, plane_size)
    if not _device.runs_kernels():
        if is_bf16(dy):
            return reference_bf16(reference.global_avg_pool2d_backward, dy, input_size)
        return reference.global_avg_pool2d_backward(dy, input_size)
    dx = _device.empty(tuple(dy.shape) + input_size, dy.dtype)
    if dx.size:
        get_kernel("pool", "global_avg_pool2d_backward" + suffix(dy))(
            _grid(dx.size), (POOL_THREADS,), (dy, dx, np.int32(planes), np.int32(plane_size)))
    return dx
