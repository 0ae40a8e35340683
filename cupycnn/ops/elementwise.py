"""ReLU forward and backward, elementwise add: launches kernels/elementwise.cu (on the numpy
device: cupycnn/cpu/elementwise.py for float32, the reference for float64)."""
import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import elementwise as cpu_elementwise
from ..reference import elementwise as reference
from ..runtime import elementwise_grid, get_kernel
from ..runtime import ELEMENTWISE_MAX_BLOCKS, ELEMENTWISE_THREADS
from ._check import check_arrays, check_int32, into
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix


def _launch(name, n, args):
    # A grid-stride loop: the index may run one grid past n before the test ends it.
    check_int32(name, headroom=ELEMENTWISE_THREADS * ELEMENTWISE_MAX_BLOCKS, n=n)
    grid, block = elementwise_grid(n)
    get_kernel("elementwise", name)(grid, block, args + (np.int32(n),))


def relu_forward(x):
    """y = max(x, 0), any shape; float32 or BF16 storage (ops._storage)."""
    check_arrays("relu_forward", dtypes=activation_dtypes(), x=(x, None))
    if not _device.runs_kernels():
        path = cpu_elementwise if cpu.fast(x) else reference
        return reference_bf16(path.relu_forward, x) if is_bf16(x) else path.relu_forward(x)
    y = _device.empty(x.shape, x.dtype)
    _launch("relu_forward" + suffix(x), x.size, (x, y))
    return y


def relu_backward(x, dy):
    """dx = dy where the forward input x > 0, else 0."""
    check_arrays("relu_backward", dtypes=activation_dtypes(), x=(x, None))
    check_arrays("relu_backward", dtypes=activation_dtypes(), x=(x, None),
                 dy=(dy, tuple(x.shape)))
    if not _device.runs_kernels():
        path = cpu_elementwise if cpu.fast(x, dy) else reference
        return reference_bf16(path.relu_backward, x, dy) if is_bf16(x) else \
            path.relu_backward(x, dy)
    dx = _device.empty(x.shape, x.dtype)
    _launch("relu_backward" + suffix(x), x.size, (x, dy, dx))
    return dx


def add(a, b, out=None):
    """out = a + b, same shapes; `out` may be a or b (in place)."""
    check_arrays("add", dtypes=activation_dtypes(), a=(a, None))
    check_arrays("add", dtypes=activation_dtypes(), a=(a, None), b=(b, tuple(a.shape)),
                 **({} if out is None else {"out": (out, tuple(a.shape))}))
    if not _device.runs_kernels():
        if is_bf16(a):
            path = cpu_elementwise if cpu.fast(a, b) else reference
            return into(out, reference_bf16(path.add, a, b))
        if cpu.fast(a, b):
            return cpu_elementwise.add(a, b, out)
        return into(out, reference.add(a, b))
    if out is None:
        out = _device.empty(a.shape, a.dtype)
    _launch("add" + suffix(a), a.size, (a, b, out))
    return out
