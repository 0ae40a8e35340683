"""Matrix products: the specification of kernels/gemm.cu (and gemm_tc.cu: `precision` rounds
both operands as the tensor cores do, rounding.round_operand; see cupycnn/precision.py)."""
import numpy as np

from .rounding import round_operand


def gemm(a, b, transpose_a=False, transpose_b=False, *, alpha=1.0, beta=0.0, out=None,
         bias=None, bias_per="column", precision="fp32"):
    """alpha * op(a) @ op(b) + bias + beta * out, where op transposes the last two axes when
    asked. a and b are 2-D, or 3-D for a batch of products (a 2-D operand is shared by the
    batch). bias is added per row (length M) or per column (length N) of the result."""
    a, b = round_operand(a, precision), round_operand(b, precision)
    op_a = np.swapaxes(a, -1, -2) if transpose_a else a
    op_b = np.swapaxes(b, -1, -2) if transpose_b else b
    result = alpha * np.matmul(op_a, op_b)
    if bias is not None:
        result = result + (bias[:, None] if bias_per == "row" else bias[None, :])
    if beta != 0.0:
        result = result + beta * out
    result = result.astype(np.result_type(a, b), copy=False)
    if out is not None:
        out[...] = result
        return out
    return result
