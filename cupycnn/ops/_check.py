"""Input checks every host wrapper runs before a launch: a kernel never sees bad input.

    shapes = check_arrays("dense_forward",
                          x=(x, ("N", "in_features")),
                          weight=(w, ("out_features", "in_features")))
    shapes["N"]   # the bound size

A pattern is a tuple of sizes: an int is a fixed size, a string names a size that must agree
wherever the same name appears, None accepts any size; a pattern of None accepts any shape. A failure is a ValueError naming the op,
the argument, the expected and the received shape (or dtype, device, layout).
"""
import numpy as np

from .. import devices as _device
from ..limits import GRID_X_MAX, GRID_YZ_MAX, INT32_MAX

FLOAT_DTYPES_KERNEL = (np.dtype(np.float32),)
FLOAT_DTYPES_NUMPY = (np.dtype(np.float32), np.dtype(np.float64))


def _render(pattern, bound):
    parts = []
    for p in pattern:
        if p is None:
            parts.append("*")
        elif isinstance(p, str):
            parts.append(f"{p}={bound[p]}" if p in bound else p)
        else:
            parts.append(str(p))
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def check_device_array(op, name, a):
    """`a` must be an array of the current device, C-contiguous."""
    dev = _device.device()
    if not (isinstance(a, np.ndarray) if dev != "cuda" else _device.is_device_array(a)):
        wanted = "a cupy.ndarray" if dev == "cuda" else "a numpy.ndarray"
        where = ("an array on the GPU" if _device.is_cupy_array(a) else
                 f"a {type(a).__module__}.{type(a).__name__}")
        raise ValueError(f"{op}: {name} must be {wanted} on the current device {dev!r}, got "
                         f"{where}; move it with cupycnn.asarray()")
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous (kernels index raw memory), got "
                         f"strides {a.strides} for shape {tuple(a.shape)}; use "
                         f"cupycnn.asarray() to make a contiguous copy")


def float_dtypes():
    """Dtypes the current device computes in: float32 for kernels; float32 or float64 on numpy."""
    return FLOAT_DTYPES_KERNEL if _device.runs_kernels() else FLOAT_DTYPES_NUMPY


def check_same_shape(op, reference_name, reference, **others):
    """Check `reference` (any shape) and every other array against its shape."""
    check_arrays(op, **{reference_name: (reference, None)})
    return check_arrays(op, **{reference_name: (reference, None)},
                        **{name: (a, tuple(reference.shape)) for name, a in others.items()})


_allowed = {}     # check_arrays' `dtypes` argument -> its tuple of np.dtype (asked every op)


def _allowed_dtypes(dtypes):
    try:
        allowed = _allowed.get(dtypes)
    except TypeError:                       # a list: not a key
        return tuple(np.dtype(d) for d in dtypes)
    if allowed is None:
        allowed = _allowed[dtypes] = tuple(np.dtype(d) for d in dtypes)
    return allowed


def check_arrays(op, bound=None, dtypes=None, **specs):
    """Check each `name=(array, pattern)`: device, contiguity, dtype, shape. Float arrays of one
    call must share a dtype. Returns the dict of bound size names."""
    bound = {} if bound is None else bound
    allowed = float_dtypes() if dtypes is None else _allowed_dtypes(dtypes)
    first_dtype = None
    for name, (a, pattern) in specs.items():
        check_device_array(op, name, a)
        if a.dtype not in allowed:
            names = " or ".join("bf16 (uint16)" if d == np.uint16 else str(d) for d in allowed)
            raise ValueError(f"{op}: {name} must be {names} on the {_device.device()} device, "
                             f"got {a.dtype}")
        if first_dtype is None:
            first_dtype = (name, a.dtype)
        elif a.dtype != first_dtype[1]:
            raise ValueError(f"{op}: {name} is {a.dtype} but {first_dtype[0]} is "
                             f"{first_dtype[1]}; all must share one dtype")
        check_shape(op, name, a.shape, pattern, bound)
    return bound


def check_shape(op, name, shape, pattern, bound):
    """Match `shape` against `pattern`, binding named sizes into `bound` (only when all match)."""
    if pattern is None:
        return bound
    shape = tuple(map(int, shape))
    if len(shape) == len(pattern):
        new = {}
        for size, p in zip(shape, pattern):
            if p is None:
                continue
            if p.__class__ is str:
                if new.setdefault(p, bound.get(p, size)) != size:
                    break
            elif size != p:
                break
        else:
            bound.update(new)
            return bound
    raise ValueError(f"{op}: {name} must have shape {_render(pattern, bound)}, got {shape}")


def check_int_array(op, name, a, pattern, bound=None):
    """An integer array (labels, indices) of any integer dtype."""
    bound = {} if bound is None else bound
    check_device_array(op, name, a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{op}: {name} must be an integer array, got {a.dtype}")
    return check_shape(op, name, a.shape, pattern, bound)


def shown(value, limit=60):
    """`value` for a one-line message: its repr on one line, cut at `limit` characters (an
    array is its dtype and shape)."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "ndim", 0):
        return f"an array of {value.dtype} {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_integer(op, name, value, low=None):
    """`value` must be an integer (an int or a NumPy integer, not a bool, not a float that
    would be truncated) of at least `low`; returns it as an int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or \
            low is not None and value < low:
        bound = f" of at least {low}" if low is not None else ""
        raise ValueError(f"{op}: {name} must be an integer{bound}, got {shown(value)}")
    return int(value)


def check_flag(op, name, value):
    """`value` must be True or False (not 'no', which is true, nor 1)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{op}: {name} must be True or False, got {type(value).__name__} "
                         f"{shown(value)}")
    return bool(value)


def check_positive(op, **values):
    for name, v in values.items():
        if int(v) < 1:
            raise ValueError(f"{op}: {name} must be at least 1, got {v}")


def into(out, result):
    """`result` written into `out` when a caller gave one (a layer's gradient buffer, which
    may be a view of an optimizer's flat buffer), else `result` itself: how the numpy path of
    an op honours an `out=` argument the kernel path writes directly."""
    if out is None:
        return result
    out[...] = result
    return out


# Kernel parameters that are sizes are 32-bit ints (and so is the index arithmetic inside the
# kernels); a grid's y and z are at most GRID_YZ_MAX. np.int32() of a NumPy integer wraps
# silently (and of a Python int, on NumPy 1.x), so each wrapper checks its sizes first.


def check_int32(op, headroom=0, **sizes):
    """Each size fits the kernel's 32-bit int (with `headroom`: the room a grid-stride loop
    needs past it), else a ValueError naming it."""
    limit = INT32_MAX - int(headroom)
    for name, value in sizes.items():
        if not -limit - 1 <= int(value) <= limit:
            raise ValueError(f"{op}: {name} = {int(value)} does not fit the kernel's 32-bit int "
                             f"(at most {limit}); split the batch or the tensor")


def check_grid(op, grid):
    """A launch grid within CUDA's limits (x up to 2^31 - 1, y and z up to 65535)."""
    dims = tuple(int(g) for g in grid) + (1,) * (3 - len(tuple(grid)))
    if dims[0] > GRID_X_MAX or dims[1] > GRID_YZ_MAX or dims[2] > GRID_YZ_MAX:
        raise ValueError(f"{op}: the launch grid {dims} is over CUDA's limits (x up to "
                         f"{GRID_X_MAX}, y and z up to {GRID_YZ_MAX}): the input is too large "
                         f"for one launch; split it")
    return grid
