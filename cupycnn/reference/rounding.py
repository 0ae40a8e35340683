"""The operand roundings of the tensor cores, in NumPy: the specification of cvt.rna.tf32.f32 and
cvt.rn.bf16.f32 (kernels/tensor_core.cuh and kernels/bf16.cuh; simt.h emulates them bit for bit).

    round_tf32(x)       float32 x rounded to TF32 (10 fraction bits), to nearest, ties away
                        from zero; returned as float32 whose low 13 bits are 0
    round_bf16(x)       float32 x rounded to BF16 (7 fraction bits), to nearest, ties to even;
                        returned as float32 whose low 16 bits are 0
    bf16_bits(x)        the same rounding as uint16 bit patterns (how kernels store bf16)
    bf16_to_float32(b)  uint16 patterns back to float32 (exact)

NaN stays NaN (BF16: the canonical 0x7fff), infinities stay infinite, and a finite value that
rounds past the largest finite one becomes infinity, as on the GPU. Any real dtype is accepted
and first converted to float32 (the value a kernel would see); the result is float32.
"""
import numpy as np


def _bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def round_tf32(x):
    """cvt.rna.tf32.f32, elementwise."""
    u = _bits(x)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)      # + half an ulp, truncate: ties away
    return np.where(nan, u, r).view(np.float32).reshape(np.shape(x))


def bf16_bits(x):
    """cvt.rn.bf16.f32, elementwise, as uint16 bit patterns."""
    u = _bits(x).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16                 # ties to even
    return np.where(nan, 0x7FFF, r).astype(np.uint16).reshape(np.shape(x))


def bf16_to_float32(bits):
    """uint16 BF16 patterns to float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x):
    """float32 x rounded to the nearest BF16 value (ties to even), as float32."""
    return bf16_to_float32(bf16_bits(x))


PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision, what="precision"):
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def round_operand(x, precision):
    """A matrix product's operand as the tensor cores see it at `precision`: unchanged for
    "fp32", round_tf32 for "tf32", round_bf16 for "bf16"; the result keeps x's dtype (a float64
    reference computes exactly on the rounded values).

    This is the one definition of each precision's operand rounding: the reference convolution
    and GEMM apply it to both operands of every product (reference.conv2d, reference.gemm), and
    a CPU fast path that computes those products in its own way calls it on its operands too,
    for instance `w = round_operand(w, cupycnn.get_precision())`, so that all paths agree."""
    check_precision(precision)
    if precision == "fp32" or x is None:
        return x
    rounded = round_tf32(x) if precision == "tf32" else round_bf16(x)
    return rounded.astype(x.dtype, copy=False)
