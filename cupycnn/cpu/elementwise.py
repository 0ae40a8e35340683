"""ReLU and add on the CPU, fast: reference/elementwise.py's functions, piece by piece on the
threads of cupycnn.cpu.parallel, with out= and no temporaries of the whole array.

relu_backward keeps the reference's exact result, dy where x > 0 and +0 elsewhere (also where dy
is inf or NaN, which a multiplication by the mask would turn into NaN): the mask becomes all-ones
or all-zeros bits and is ANDed with dy's bits.
"""
import numpy as np

from . import parallel


def _elementwise(out, inputs, body):
    """body(out piece, input pieces...) for each piece of the flattened arrays."""
    flat_out = out.reshape(-1)
    flat_in = [a.reshape(-1) for a in inputs]
    pieces = parallel.flat_pieces(flat_out.size)

    def task(k):
        start, stop = pieces[k]
        body(flat_out[start:stop], *(a[start:stop] for a in flat_in))

    parallel.parallel_for(len(pieces), task,
                          nbytes=out.nbytes + sum(a.nbytes for a in inputs))
    return out


def relu_forward(x):
    """y = max(x, 0) (NaN stays NaN)."""
    return _elementwise(np.empty_like(x), [x], lambda y, x: np.maximum(x, 0, out=y))


def _relu_backward_piece(dx, x, dy):
    mask = parallel.scratch("relu.mask", x.shape, np.bool_)
    bits = parallel.scratch("relu.bits", x.shape, _BITS[dx.dtype.itemsize])
    np.greater(x, 0, out=mask)
    np.copyto(bits, mask, casting="unsafe")            # 1 or 0
    np.negative(bits, out=bits)                        # all ones or all zeros
    np.bitwise_and(dy.view(bits.dtype), bits, out=dx.view(bits.dtype))


_BITS = {4: np.int32, 8: np.int64}


def relu_backward(x, dy):
    """dx = dy where x > 0, else 0."""
    dtype = np.result_type(x, dy)
    return _elementwise(np.empty(x.shape, dtype), [x, dy.astype(dtype, copy=False)],
                        _relu_backward_piece)


def add(a, b, out=None):
    """a + b (into `out` when given; it may be a or b)."""
    if out is None:
        out = np.empty(a.shape, np.result_type(a, b))
    return _elementwise(out, [a, b], lambda o, a, b: np.add(a, b, out=o))
