"""ReLU forward and backward, elementwise add: launches kernels/elementwise.cu."""
import numpy as np

from .. import devices as _device
from ..reference import elementwise as reference
from ..runtime import elementwise_grid, get_kernel
from ..runtime import ELEMENTWISE_MAX_BLOCKS, ELEMENTWISE_THREADS
from ._check import check_arrays, check_int32, check_same_shape, into


def _launch(name, n, args):
    # A grid-stride loop: the index may run one grid past n before the test ends it.
    check_int32(name, headroom=ELEMENTWISE_THREADS * ELEMENTWISE_MAX_BLOCKS, n=n)
    grid, block = elementwise_grid(n)
    get_kernel("elementwise", name)(grid, block, args + (np.int32(n),))


def relu_forward(x):
    """y = max(x, 0), any shape."""
    check_arrays("relu_forward", x=(x, None))
    if not _device.runs_kernels():
        return reference.relu_forward(x)
    y = _device.empty(x.shape, x.dtype)
    _launch("relu_forward", x.size, (x, y))
    return y


def relu_backward(x, dy):
    """dx = dy where the forward input x > 0, else 0."""
    check_same_shape("relu_backward", "x", x, dy=dy)
    if not _device.runs_kernels():
        return reference.relu_backward(x, dy)
    dx = _device.empty(x.shape, x.dtype)
    _launch("relu_backward", x.size, (x, dy, dx))
    return dx


def add(a, b, out=None):
    """out = a + b, same shapes; `out` may be a or b (in place)."""
    check_same_shape("add", "a", a, b=b, **({} if out is None else {"out": out}))
    if not _device.runs_kernels():
        return into(out, reference.add(a, b))
    if out is None:
        out = _device.empty(a.shape, a.dtype)
    _launch("add", a.size, (a, b, out))
    return out
