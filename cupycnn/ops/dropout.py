"""Inverted dropout: launches kernels/dropout.cu, specified by reference/dropout.py.

The mask is a function of (seed, stream, element index) through Philox4x32-10: element i is kept
when its uniform number, word i mod 4 of the block (i div 4, stream), is >= p (the maths:
reference/dropout.py). Backward passes the same (seed, stream) and gets the same mask back, so
no mask is stored between forward and backward. On the numpy device float32
runs go to cupycnn/cpu/dropout.py, which keeps the mask in `cache` (a dict the layer holds from
forward to backward) instead: on a CPU drawing it again costs more than keeping it.
"""
import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import dropout as cpu_dropout
from ..reference import dropout as reference
from ..runtime import ceil_div, elementwise_grid, get_kernel
from ._check import check_arrays, shown
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix

UINT64_MAX = 2**64 - 1


def check_probability(op, p):
    """p must be a number in [0, 1] (PyTorch's message)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{op}: dropout probability has to be between 0 and 1, but got {shown(p)}")
    return float(p)


def _check_counter(op, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 0 <= int(value) <= UINT64_MAX:
        raise ValueError(f"{op}: {name} must be an int in [0, 2^64), got {shown(value)}")
    return int(value)


def _stream_pointer(op, stream):
    """The stream as the kernels read it: a uint64 [1] device array (given, or made here from an
    int)."""
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return _device.asarray(np.array([_check_counter(op, "stream", stream)], np.uint64))
    check_arrays(op, dtypes=(np.uint64,), stream=(stream, (1,)))
    return stream


def _launch(op, name, a, p, seed, stream, cache):
    p = check_probability(op, p)
    seed = _check_counter(op, "seed", seed)
    if not _device.runs_kernels():
        stream = _check_counter(op, "stream", stream)
        if cpu.fast(a):
            fn = getattr(cpu_dropout, name)
            return reference_bf16(fn, a, p, seed, stream, cache) if is_bf16(a) else \
                fn(a, p, seed, stream, cache)
        fn = getattr(reference, name)
        return reference_bf16(fn, a, p, seed, stream) if is_bf16(a) else fn(a, p, seed, stream)
    stream = _stream_pointer(op, stream)
    out = _device.empty(a.shape, a.dtype)
    if a.size:
        # A thread per four elements: one Philox block draws their four numbers.
        get_kernel("dropout", name + suffix(a))(*elementwise_grid(ceil_div(a.size, 4)), (
            a, out, np.int64(a.size), np.float32(p), np.float32(reference.scale(p)),
            np.uint64(seed), stream))
    return out


def dropout_forward(x, p, seed, stream, cache=None):
    """y = x * mask / (1 - p), any shape; mask from (seed, stream). On the kernel devices the
    stream may be a uint64 [1] device array holding it (StreamCounter.stream), which the kernel
    reads when it runs. `cache`: see the module docstring."""
    check_arrays("dropout_forward", dtypes=activation_dtypes(), x=(x, None))
    return _launch("dropout_forward", "dropout_forward", x, p, seed, stream, cache)


def dropout_backward(dy, p, seed, stream, cache=None):
    """dx = dy * mask / (1 - p) with the forward's (seed, stream): the same mask."""
    check_arrays("dropout_backward", dtypes=activation_dtypes(), dy=(dy, None))
    return _launch("dropout_backward", "dropout_backward", dy, p, seed, stream, cache)


class StreamCounter:
    """A dropout layer's call counter in device memory (kernel devices), advanced by a kernel so
    that a replayed step draws a new mask each time: state = [calls, stream]; `advance()`
    makes the stream of the next forward (calls | the rank's bits, random.stream) and counts
    the call; `stream` is the [1] view the dropout kernels read."""

    def __init__(self, calls, stream_high):
        self.stream_high = int(stream_high)
        self.state = _device.asarray(np.array([int(calls), 0], np.uint64))
        self.device = _device.device()

    @property
    def stream(self):
        return self.state[1:]        # a view made on demand: a deep copy keeps it aliased

    def advance(self):
        get_kernel("dropout", "dropout_next_stream")((1,), (1,),
                                                     (self.state, np.uint64(self.stream_high)))

    def calls(self):
        """The count, read from the device."""
        return int(_device.asnumpy(self.state)[0])

    def set_calls(self, calls):
        _device.write(self.state, np.array([int(calls), 0], np.uint64))
