"""Per-channel sums (bias gradients): launches kernels/reduce.cu."""
import math

import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import reduce as cpu_reduce
from ..reference import reduce as reference
from ._check import check_arrays, check_int32, into
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix
from ..runtime import get_kernel
from ._launch import kernel_constants

CHANNEL_SUM_THREADS = kernel_constants("reduce")["CHANNEL_SUM_THREADS"]   # whole warps


def channel_sum(x, out=None):
    """out[c] = sum of x over every axis but axis 1; x is [N, C] or [N, C, ...], float or BF16
    storage (ops._storage; the sum is float32 then). `out`, when given, receives the result (a
    layer's gradient buffer)."""
    op = "channel_sum"
    check_arrays(op, dtypes=activation_dtypes(), x=(x, None))
    if x.ndim < 2:
        raise ValueError(f"{op}: x must have shape (N, C, ...), got {tuple(x.shape)}")
    sizes = check_arrays(op, dtypes=activation_dtypes(), x=(x, ("N", "C") + (None,) * (x.ndim - 2)))
    sum_dtype = np.dtype(np.float32) if is_bf16(x) else x.dtype
    if out is not None:
        check_arrays(op, bound=sizes, dtypes=(sum_dtype,), out=(out, ("C",)))
    if not _device.runs_kernels():
        if is_bf16(x):
            return into(out, reference_bf16(reference.channel_sum, x, outputs=0))
        return into(out, (cpu_reduce if cpu.fast(x) else reference).channel_sum(x))
    outer, channels, inner = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    check_int32(op, elements=outer * channels * inner)
    if out is None:
        out = _device.empty((channels,), sum_dtype)
    if channels:
        get_kernel("reduce", "channel_sum" + suffix(x))((channels,), (CHANNEL_SUM_THREADS,),
                                                         (x, out, np.int32(outer),
                                                          np.int32(channels), np.int32(inner)))
    return out
