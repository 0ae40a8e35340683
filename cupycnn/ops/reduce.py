"""Per-channel sums (bias gradients): launches kernels/reduce.cu."""
import math

import numpy as np

from .. import devices as _device
from ..reference import reduce as reference
from ._check import check_arrays, check_int32, into
from ..runtime import get_kernel
from ._launch import kernel_constants

CHANNEL_SUM_THREADS = kernel_constants("reduce")["CHANNEL_SUM_THREADS"]   # whole warps


def channel_sum(x, out=None):
    """out[c] = sum of x over every axis but axis 1; x is [N, C] or [N, C, ...]. `out`, when
    given, receives the result (a layer's gradient buffer)."""
    check_arrays("channel_sum", x=(x, None))
    if x.ndim < 2:
        raise ValueError(f"channel_sum: x must have shape (N, C, ...), got {tuple(x.shape)}")
    sizes = check_arrays("channel_sum", x=(x, ("N", "C") + (None,) * (x.ndim - 2)))
    if out is not None:
        check_arrays("channel_sum", bound=sizes, x=(x, ("N", "C") + (None,) * (x.ndim - 2)),
                     out=(out, ("C",)))
    if not _device.runs_kernels():
        return into(out, reference.channel_sum(x))
    outer, channels, inner = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    check_int32("channel_sum", elements=outer * channels * inner)
    if out is None:
        out = _device.empty((channels,), x.dtype)
    if channels:
        get_kernel("reduce", "channel_sum")((channels,), (CHANNEL_SUM_THREADS,),
                                            (x, out, np.int32(outer), np.int32(channels),
                                             np.int32(inner)))
    return out
