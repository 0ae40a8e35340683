"""Matrix products on the CPU: reference/gemm.py's function, with the product cut into row
pieces fixed by the shapes and run on the threads with BLAS held to one thread (so its bits do
not depend on the thread count; see cupycnn.cpu.parallel). Batched (3-D) products run the
reference.
"""
import numpy as np

from . import parallel
from ..reference import gemm as reference
from ..reference.rounding import round_operand

ROWS = 256          # rows of the result per piece


def gemm(a, b, transpose_a=False, transpose_b=False, *, alpha=1.0, beta=0.0, out=None,
         bias=None, bias_per="column", precision="fp32"):
    """As reference.gemm (`precision` rounds both operands, as there)."""
    if a.ndim != 2 or b.ndim != 2:
        return reference.gemm(a, b, transpose_a, transpose_b, alpha=alpha, beta=beta, out=out,
                              bias=bias, bias_per=bias_per, precision=precision)
    a, b = round_operand(a, precision), round_operand(b, precision)
    op_a = a.T if transpose_a else a
    op_b = b.T if transpose_b else b
    dtype = np.result_type(a, b)
    product = np.empty((op_a.shape[0], op_b.shape[1]), dtype)
    pieces = parallel.chunks(product.shape[0], ROWS)

    def task(k):
        start, stop = pieces[k]
        np.matmul(op_a[start:stop], op_b, out=product[start:stop])

    parallel.parallel_for(len(pieces), task, nbytes=parallel.product_bytes(
        product.shape[0], op_a.shape[1], product.shape[1]))
    # The reference's steps from here on, on the product.
    result = product if alpha == 1.0 else alpha * product
    if bias is not None:
        result = result + (bias[:, None] if bias_per == "row" else bias[None, :])
    if beta != 0.0:
        result = result + beta * out
    result = result.astype(dtype, copy=False)
    if out is not None:
        out[...] = result
        return out
    return result
