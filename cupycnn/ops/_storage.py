"""Activation storage: float32, or bfloat16 held as its 16-bit patterns.

Under precision "bf16" the activations and their gradients between layers are stored in BF16,
half the memory and half the traffic of float32; parameters, their gradients, optimizer state,
the loss and every reduction stay float32. A BF16 array is a uint16 array of the bit patterns on
every device (kernels/bf16.cuh: `struct bf16`; reference/rounding.py: bf16_bits,
bf16_to_float32), so the three devices hold the same bits:

- cuda, sim: each kernel of the step has a BF16-storage entry point (`relu_forward_bf16`, ...),
  the same template body as the float32 one, FP32 arithmetic inside, one round to nearest even
  when a result is stored;
- numpy: the reference computes in float32 on the decoded values and its result is rounded the
  same way (`reference_bf16`).

So an op on BF16 storage is, bit for bit, its float32 version on the decoded inputs with the
output rounded (tests/test_bf16.py holds every one to that). `to_bf16` / `to_float32` convert.
"""
import numpy as np

from .. import devices as _device
from ..reference import rounding
from ..runtime import ELEMENTWISE_MAX_BLOCKS, ELEMENTWISE_THREADS, elementwise_grid, get_kernel
from ._check import check_arrays, check_int32, float_dtypes

BF16 = np.dtype(np.uint16)


def is_bf16(a):
    return getattr(a, "dtype", None) == BF16     # not an array: not BF16 (its check says why)


_ACTIVATION_DTYPES = {}      # float_dtypes() -> those and BF16


def activation_dtypes():
    """Dtypes an activation may have on the current device: its float dtypes and BF16."""
    floats = float_dtypes()
    dtypes = _ACTIVATION_DTYPES.get(floats)
    if dtypes is None:
        dtypes = _ACTIVATION_DTYPES[floats] = tuple(floats) + (BF16,)
    return dtypes


def suffix(a):
    """The kernel-name suffix for an activation's storage: "_bf16" or ""."""
    return "_bf16" if is_bf16(a) else ""


def check_storage(op, **arrays):
    """Activations of one call share one storage (all BF16 or all float), else a ValueError."""
    kinds = {name: is_bf16(a) for name, a in arrays.items() if a is not None}
    if len(set(kinds.values())) > 1:
        described = ", ".join(f"{n} {'bf16' if b else arrays[n].dtype}" for n, b in kinds.items())
        raise ValueError(f"{op}: the activations must share one storage, got {described}; "
                         f"convert with cupycnn.ops.to_bf16 / to_float32")


def decode(a):
    """float32 values of a BF16 array (others as they are): for the numpy device."""
    return rounding.bf16_to_float32(a) if is_bf16(a) else a


def encode(a):
    """A float array rounded to BF16 patterns."""
    return rounding.bf16_bits(a)


def reference_bf16(fn, *args, outputs=1, **kwargs):
    """fn (a numpy-device function: the reference's or the CPU path's, whichever the float32
    op would take) on the decoded arguments; its first `outputs` results (the
    activations) rounded to BF16, the others (statistics, per-channel vectors) left float32."""
    result = fn(*(decode(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
    if not isinstance(result, tuple):
        return encode(result) if outputs else result
    return tuple(encode(r) if i < outputs else r for i, r in enumerate(result))


def precision_storage():
    """The activation storage the current precision asks for: BF16 under "bf16", else float32
    (cupycnn.set_precision). The network's input is made so (the augmentation kernels write it,
    or as_activation casts it); every op then keeps the storage of its input."""
    from ..precision import get_precision
    return BF16 if get_precision() == "bf16" else np.dtype(np.float32)


def as_activation(x):
    """x in the storage the current precision asks for: a float32 x cast to BF16 under "bf16"
    (one pass), otherwise x itself."""
    if precision_storage() == BF16 and x.dtype == np.float32:
        return to_bf16(x)
    return x


def _cast(op, name, x, dtype, out=None):
    check_arrays(op, dtypes=activation_dtypes(), x=(x, None))
    if out is not None:
        check_arrays(op, dtypes=(dtype,), out=(out, x.shape))
    if not _device.runs_kernels():
        result = encode(x) if dtype == BF16 else decode(x).astype(np.float32, copy=False)
        if out is None:
            return result
        out[...] = result
        return out
    if out is None:
        out = _device.empty(x.shape, dtype)
    n = x.size
    if n:
        check_int32(op, headroom=ELEMENTWISE_THREADS * ELEMENTWISE_MAX_BLOCKS, n=n)
        grid, block = elementwise_grid(n)
        get_kernel("elementwise", name)(grid, block, (x, out, np.int32(n)))
    return out


def to_bf16(x, out=None):
    """x (float32) rounded to BF16 storage (into `out`, a BF16 array of x's shape, when given);
    a BF16 x without `out` is returned as it is."""
    if is_bf16(x):
        if out is None:
            return x
        raise ValueError("to_bf16: x is BF16 already; out= takes a float32 x")
    return _cast("to_bf16", "cast_to_bf16", x, BF16, out)


def to_float32(x):
    """x (BF16 storage) as float32, exactly; a float x is returned as it is."""
    if not is_bf16(x):
        return x
    return _cast("to_float32", "cast_to_float32", x, np.float32)


__all__ = ["BF16", "activation_dtypes", "as_activation", "check_storage", "decode", "is_bf16",
           "precision_storage", "reference_bf16", "suffix", "to_bf16", "to_float32"]
