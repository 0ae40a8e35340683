"""Inverted dropout: launches kernels/dropout.cu, specified by reference/dropout.py.

The mask is a function of (seed, stream, element index) through Philox4x32-10: element i is kept
when philox_uniform(seed, stream, i) >= p. Backward passes the same (seed, stream) and gets the
same mask back, so no mask is stored between forward and backward. On the numpy device float32
runs go to cupycnn/cpu/dropout.py, which keeps the mask in `cache` (a dict the layer holds from
forward to backward) instead: on a CPU drawing it again costs more than keeping it.
"""
import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import dropout as cpu_dropout
from ..reference import dropout as reference
from ..runtime import elementwise_grid, get_kernel
from ._check import check_arrays

UINT64_MAX = 2**64 - 1


def check_probability(op, p):
    """p must be a number in [0, 1] (PyTorch's message)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{op}: dropout probability has to be between 0 and 1, but got {p!r}")
    return float(p)


def _check_counter(op, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 0 <= int(value) <= UINT64_MAX:
        raise ValueError(f"{op}: {name} must be an int in [0, 2^64), got {value!r}")
    return int(value)


def _launch(op, name, a, p, seed, stream, cache):
    p = check_probability(op, p)
    seed, stream = _check_counter(op, "seed", seed), _check_counter(op, "stream", stream)
    if not _device.runs_kernels():
        if cpu.fast(a):
            return getattr(cpu_dropout, name)(a, p, seed, stream, cache)
        return getattr(reference, name)(a, p, seed, stream)
    out = _device.empty(a.shape, a.dtype)
    if a.size:
        get_kernel("dropout", name)(*elementwise_grid(a.size), (
            a, out, np.int64(a.size), np.float32(p), np.float32(reference.scale(p)),
            np.uint64(seed), np.uint64(stream)))
    return out


def dropout_forward(x, p, seed, stream, cache=None):
    """y = x * mask / (1 - p), any shape; mask from (seed, stream). `cache`: see above."""
    check_arrays("dropout_forward", x=(x, None))
    return _launch("dropout_forward", "dropout_forward", x, p, seed, stream, cache)


def dropout_backward(dy, p, seed, stream, cache=None):
    """dx = dy * mask / (1 - p) with the forward's (seed, stream): the same mask."""
    check_arrays("dropout_backward", dy=(dy, None))
    return _launch("dropout_backward", "dropout_backward", dy, p, seed, stream, cache)

