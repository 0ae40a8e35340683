"""Matrix products on kernels of our own (no cuBLAS, no cupy.matmul), as a progression
(`version`; default: from the precision, cupycnn.set_precision):
    "direct"       kernels/gemm_direct.cu: one thread per output (fp32)
    "tiled"        kernels/gemm.cu: FP32 register tiles (fp32; the default)
    "tensor_core"  kernels/gemm_tc.cu: tensor cores, tf32 or bf16 operands, FP32 accumulation
                   (the default at those precisions), tile per shape from ops/tiles.py
"""
import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import gemm as cpu_gemm
from ..precision import get_precision
from ..reference import gemm as reference
from ..runtime import ceil_div, get_kernel
from . import tiles
from ._check import check_arrays, check_grid, check_int32
from .conv2d import resolve_version

TILE_M, TILE_N, GEMM_THREADS = 64, 64, 256          # as in gemm.cu
_BIAS_MODE = {None: 0, "row": 1, "column": 2}
_KERNEL = {(False, False): "sgemm_nn", (False, True): "sgemm_nt", (True, False): "sgemm_tn"}
_TC_KERNEL = {(False, False): "gemm_tc_nn", (False, True): "gemm_tc_nt", (True, False): "gemm_tc_tn"}
DIRECT_THREADS = 256


def gemm(a, b, transpose_a=False, transpose_b=False, *, alpha=1.0, beta=0.0, out=None,
         bias=None, bias_per="column", version=None):
    """alpha * op(a) @ op(b) + bias + beta * out; op transposes when asked.

    a: (M, K), or (K, M) transposed; b: (K, N), or (N, K) transposed; either may carry a leading
    batch axis (a 2-D operand is shared by every product of the batch). bias: (M,) added per row
    or (N,) per column. out: the result array, required when beta != 0 (it is read then).
    Both operands transposed is not offered (no layer needs it). version: see the module's doc.
    """
    op = "gemm"
    if (transpose_a, transpose_b) not in _KERNEL:
        raise ValueError(f"{op}: transposing both operands is not supported")
    check_arrays(op, a=(a, None), b=(b, None))
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ValueError(f"{op}: a and b must be 2-D or 3-D (batched), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    batch = a.shape[0] if a.ndim == 3 else (b.shape[0] if b.ndim == 3 else None)
    lead = ("batch",) if batch is not None else ()
    pa = ("K", "M") if transpose_a else ("M", "K")
    pb = ("N", "K") if transpose_b else ("K", "N")
    specs = {"a": (a, (lead + pa) if a.ndim == 3 else pa),
             "b": (b, (lead + pb) if b.ndim == 3 else pb)}
    sizes = check_arrays(op, **specs)
    if bias_per not in ("row", "column"):
        raise ValueError(f"{op}: bias_per must be 'row' or 'column', got {bias_per!r}")
    if bias is not None:
        check_arrays(op, bound=sizes, bias=(bias, ("M",) if bias_per == "row" else ("N",)))
    out_shape = ((batch,) if batch is not None else ()) + (sizes["M"], sizes["N"])
    if out is not None:
        check_arrays(op, bound=dict(sizes, batch=batch), a=specs["a"],
                     out=(out, (lead + ("M", "N"))))
    elif beta != 0.0:
        raise ValueError(f"{op}: beta={beta} reads out, so out must be given")
    if not _device.runs_kernels():
        path = cpu_gemm if cpu.fast(a, b, bias, out) else reference
        return path.gemm(a, b, transpose_a, transpose_b, alpha=alpha, beta=beta, out=out,
                         bias=bias, bias_per=bias_per, precision=get_precision())
    version = resolve_version(op, version)
    if out is None:
        out = _device.empty(out_shape, a.dtype)
    M, N, K = sizes["M"], sizes["N"], sizes["K"]
    if M * N == 0 or batch == 0:     # nothing to compute (a batch of 0 is not a batch of 1)
        return out
    nb = batch or 1
    check_int32(op, M=M, N=N, K=K, a_elements=M * K, b_elements=K * N, out_elements=M * N)
    head = (a, b, out, bias, np.int32(M), np.int32(N), np.int32(K), np.float32(alpha),
            np.float32(beta), np.int32(_BIAS_MODE[None if bias is None else bias_per]))
    strides = (np.int64(M * K if a.ndim == 3 else 0), np.int64(K * N if b.ndim == 3 else 0),
               np.int64(M * N if batch is not None else 0))
    if version == "direct":
        grid = check_grid(op, (ceil_div(M * N, DIRECT_THREADS), 1, nb))
        get_kernel("gemm_direct", "gemm_direct")(
            grid, (DIRECT_THREADS,), head + (np.int32(transpose_a), np.int32(transpose_b)) + strides)
    elif version == "tiled":
        grid = check_grid(op, (ceil_div(N, TILE_N), ceil_div(M, TILE_M), nb))
        get_kernel("gemm", _KERNEL[(transpose_a, transpose_b)])(grid, (GEMM_THREADS,),
                                                                head + strides)
    else:
        tile = tiles.choose_tile(M, N, nb)
        grid = check_grid(op, (ceil_div(N, tile.bn), ceil_div(M, tile.bm), nb))
        get_kernel("gemm_tc", _TC_KERNEL[(transpose_a, transpose_b)],
                   tile.defines(get_precision()))(grid, (tile.threads,), head + strides)
    return out
