"""Matrix products on kernels of our own (no cuBLAS, no cupy.matmul), as a progression
(`version`; default: from the precision, cupycnn.set_precision):
    "direct"       kernels/gemm_direct.cu: one thread per output (fp32)
    "tiled"        kernels/gemm.cu: FP32 register tiles (fp32; the default)
    "tensor_core"  kernels/gemm_tc.cu: tensor cores, tf32 or bf16 operands, FP32 accumulation
                   (the default at those precisions), tile per shape from ops/tiles.py

Storage: the dense layer's products on BF16 activations (ops._storage; precision bf16) take BF16
operands: a and out BF16 with b float32 for a @ b and a @ b^T (dx = dy W, y = x W^T + b), a and
b BF16 with a float32 out for a^T @ b (dW = dy^T x); the bias is float32. The tensor-core
kernels read and write BF16 themselves (the _bf16 entry points: gemm_tc.cu's header); the direct
and tiled kernels (fp32: the trainer never gives them BF16) go through float32 copies. Either
way the result is the float32 op's on the decoded inputs, rounded once when stored in BF16
(tests/test_bf16.py).
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
from ._launch import resolve_version
from ._storage import BF16, decode, encode, is_bf16, suffix, to_bf16, to_float32

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
    bf16 = any(is_bf16(t) for t in (a, b, out))
    if bf16:
        _check_bf16_storage(op, a, b, out, transpose_a)
    _check_operands(op, bf16, a=(a, None), b=(b, None))
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ValueError(f"{op}: a and b must be 2-D or 3-D (batched), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    batch = a.shape[0] if a.ndim == 3 else (b.shape[0] if b.ndim == 3 else None)
    lead = ("batch",) if batch is not None else ()
    pa = ("K", "M") if transpose_a else ("M", "K")
    pb = ("N", "K") if transpose_b else ("K", "N")
    specs = {"a": (a, (lead + pa) if a.ndim == 3 else pa),
             "b": (b, (lead + pb) if b.ndim == 3 else pb)}
    sizes = _check_operands(op, bf16, **specs)
    if bias_per not in ("row", "column"):
        raise ValueError(f"{op}: bias_per must be 'row' or 'column', got {bias_per!r}")
    if bias is not None:
        check_arrays(op, bound=sizes, dtypes=(np.float32,) if bf16 else None,
                     bias=(bias, ("M",) if bias_per == "row" else ("N",)))
    out_shape = ((batch,) if batch is not None else ()) + (sizes["M"], sizes["N"])
    # The result's storage: a's (BF16 or its float dtype), but float32 for a^T b on BF16.
    out_dtype = np.dtype(np.float32) if bf16 and transpose_a else a.dtype
    if out is not None:
        _check_operands(op, bf16, bound=dict(sizes, batch=batch),
                        **({} if bf16 else {"a": specs["a"]}), out=(out, (lead + ("M", "N"))))
    elif beta != 0.0:
        raise ValueError(f"{op}: beta={beta} reads out, so out must be given")
    args = (transpose_a, transpose_b)
    kwargs = dict(alpha=alpha, beta=beta, bias=bias, bias_per=bias_per)
    if not _device.runs_kernels():
        if bf16:     # the float32 product on the decoded values, rounded where stored in BF16
            return _bf16_via_float32(_numpy_gemm, a, b, out, out_dtype, args, kwargs)
        return _numpy_gemm(a, b, *args, out=out, **kwargs)
    version = resolve_version(op, version)
    if bf16 and version != "tensor_core":           # kernels of float storage: float32 copies
        return _bf16_via_float32(gemm, a, b, out, out_dtype, args, dict(kwargs, version=version))
    if out is None:
        out = _device.empty(out_shape, out_dtype)
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
        get_kernel("gemm_tc", _TC_KERNEL[(transpose_a, transpose_b)] + suffix(a),
                   tile.defines(get_precision()))(grid, (tile.threads,), head + strides)
    return out


def _numpy_gemm(a, b, transpose_a, transpose_b, *, out=None, **kwargs):
    path = cpu_gemm if cpu.fast(a, b, kwargs["bias"], out) else reference
    return path.gemm(a, b, transpose_a, transpose_b, out=out, precision=get_precision(), **kwargs)


def _bf16_via_float32(fn, a, b, out, out_dtype, args, kwargs):
    """fn (a float32 gemm) on the decoded a, b (and out, which beta reads), the result stored in
    out_dtype: rounded once to BF16, or float32 as it is (into out when given)."""
    to32 = to_float32 if _device.runs_kernels() else decode
    f_out = None if out is None else to32(out)      # a float32 out is written in place
    result = fn(to32(a), to32(b), *args, out=f_out, **kwargs)
    if out_dtype != BF16:
        return result
    if not _device.runs_kernels():
        if out is None:
            return encode(result)
        out[...] = encode(result)
        return out
    return to_bf16(result, out=out)


def _check_operands(op, bf16, bound=None, **specs):
    """check_arrays on `specs`: float arrays of one dtype; on BF16 storage, each BF16 or
    float32 (_check_bf16_storage has said which)."""
    if not bf16:
        return check_arrays(op, bound=bound, **specs)
    bound = {} if bound is None else bound
    for name, spec in specs.items():
        check_arrays(op, bound=bound, dtypes=(BF16 if is_bf16(spec[0]) else np.float32,),
                     **{name: spec})
    return bound


def _check_bf16_storage(op, a, b, out, transpose_a):
    """BF16 operands come in the dense layer's patterns (the module's doc), else a ValueError."""
    want = (True, True, False) if transpose_a else (True, False, True)     # a, b, out BF16?
    got = (is_bf16(a), is_bf16(b), None if out is None else is_bf16(out))
    if all(g is None or g == w for g, w in zip(got, want)):
        return
    described = ", ".join(f"{n} {'bf16' if is_bf16(t) else t.dtype}"
                          for n, t in (("a", a), ("b", b), ("out", out)) if t is not None)
    raise ValueError(f"{op}: on BF16 storage a @ b and a @ b^T take a and out BF16 with b "
                     f"float32, and a^T @ b takes a and b BF16 with a float32 out; got "
                     f"{described} (convert with cupycnn.ops.to_bf16 / to_float32)")
