"""The three devices and the arrays that live on them.

| device  | arrays | what runs an op                                            |
| ------- | ------ | ---------------------------------------------------------- |
| `cuda`  | CuPy   | `kernels/*.cu` compiled by NVRTC through `cupy.RawModule`  |
| `sim`   | NumPy  | the same `kernels/*.cu` built by g++ under the emulator    |
| `numpy` | NumPy  | `cupycnn/reference/`, plain NumPy, float32 or float64      |

`use(name)` selects one; `CUPYCNN_DEVICE` sets it from the environment. Without either, the
device is `cuda` where a GPU is usable and `numpy` otherwise, said once on stderr.
"""
import os
import sys

import numpy as np

DEVICES = ("cuda", "sim", "numpy")


class DeviceUnavailableError(RuntimeError):
    """The `cuda` device was asked for where no GPU is usable."""


_current = None
_cuda_reason = None          # why cuda is not usable, once probed; "" when it is
_announced = False


def _probe_cuda():
    """'' when a GPU is usable through CuPy, else one sentence saying why not."""
    global _cuda_reason
    if _cuda_reason is None:
        try:
            import cupy
        except Exception as e:  # ImportError, or a broken CUDA library underneath
            _cuda_reason = (f"CuPy is not installed ({type(e).__name__}: {e}); install the "
                            f"project with the cuda12 or cuda13 extra")
        else:
            try:
                count = cupy.cuda.runtime.getDeviceCount()
                if count < 1:
                    _cuda_reason = "the CUDA driver reports no GPU"
                else:
                    cupy.cuda.Device(0).compute_capability  # touches the driver for real
                    _cuda_reason = ""
            except Exception as e:
                message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                _cuda_reason = f"CuPy cannot reach a GPU ({message})"
    return _cuda_reason


def cuda_available():
    """True where the `cuda` device can be used."""
    return _probe_cuda() == ""


def _is_rank_zero():
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var] == "0"
    return True


def use(name):
    """Select the device for everything that follows: "cuda", "sim" or "numpy"."""
    global _current
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}: expected one of {', '.join(DEVICES)}")
    if name == "cuda" and not cuda_available():
        raise DeviceUnavailableError(
            f"the cuda device was asked for, but no GPU is usable: {_probe_cuda()}. "
            f"Use the sim device (CUDA kernels emulated on the CPU) or numpy instead.")
    _current = name
    return name


def device():
    """The current device's name."""
    global _announced
    if _current is None:
        env = os.environ.get("CUPYCNN_DEVICE", "").strip()
        if env and env != "auto":
            try:
                return use(env)
            except ValueError:
                raise ValueError(f"CUPYCNN_DEVICE={env!r}: expected one of "
                                 f"{', '.join(DEVICES)} or auto") from None
        chosen = use("cuda" if cuda_available() else "numpy")
        if not _announced and _is_rank_zero():
            _announced = True
            if chosen == "numpy":
                print(f"cupycnn: no usable GPU ({_probe_cuda()}); using the numpy device. "
                      f"cupycnn.use('sim') runs the CUDA kernels on the CPU emulator.",
                      file=sys.stderr)
            else:
                print("cupycnn: using the cuda device", file=sys.stderr)
    return _current


def runs_kernels():
    """True on `cuda` and `sim`, where ops launch kernels; False on `numpy`."""
    return device() != "numpy"


def xp():
    """The array module of the current device: cupy on `cuda`, numpy elsewhere."""
    if device() == "cuda":
        import cupy
        return cupy
    return np


def is_device_array(a):
    """True if `a` is an array of the current device's kind."""
    if device() == "cuda":
        import cupy
        return isinstance(a, cupy.ndarray)
    return isinstance(a, np.ndarray)


def is_cupy_array(a):
    """A cupy.ndarray, told by its type's module (CuPy need not be imported to ask)."""
    return type(a).__module__.startswith("cupy")


def asnumpy(a):
    """A NumPy array from an array of any device (a copy from the GPU on `cuda`)."""
    on_gpu = is_cupy_array(a)
    if _capturing is not None and (isinstance(a, np.ndarray) or on_gpu):
        _capture_violation("reads a device array on the host (asnumpy)")
    if isinstance(a, np.ndarray):
        return a
    if on_gpu:
        return a.get()
    return np.asarray(a)


def asarray(a, dtype=None):
    """An array of the current device holding `a` (a copy to the GPU on `cuda`), C-contiguous."""
    if _capturing is not None:
        _capture_violation("copies a host array to the device (asarray)")
    if device() == "cuda":
        import cupy
        out = cupy.asarray(a, dtype=dtype)
    else:
        out = np.asarray(asnumpy(a), dtype=dtype)
    # (not ascontiguousarray: it turns a 0-d array into a 1-d one)
    return out if out.flags.c_contiguous else out.copy(order="C")


_poison = os.environ.get("CUPYCNN_POISON", "") not in ("", "0")


def set_poison(enabled):
    """Fill every array that ops allocate for their outputs with NaN (floats) or the largest
    value (integers) before the kernel writes it, so that an element a kernel forgets to write
    shows up in the result. A debugging aid, on in the kernel tests; CUPYCNN_POISON=1 sets it."""
    global _poison
    _poison = bool(enabled)


def empty(shape, dtype=np.float32):
    """An uninitialised array on the current device (poisoned when set_poison is on). Inside a
    planned step (cupycnn.plan) it is the plan's buffer for this request, not a new one."""
    if _allocator is not None:
        a = _allocator(shape, dtype)
        if _capturing is not None:         # a fill would be host work inside the recording
            return a
    elif _capturing is not None:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else shape
        _capture_violation(f"allocates an array of shape {tuple(int(s) for s in shape)} "
                           f"outside the memory plan")
    else:
        a = _allocate(shape, dtype)
    if _poison:
        dt = np.dtype(dtype)
        a.fill(np.nan if dt.kind == "f" else (np.iinfo(dt).max if dt.kind in "iu" else 1))
    return a


def zeros(shape, dtype=np.float32):
    if _allocator is None and _capturing is None:
        return _count(xp().zeros(shape, dtype=dtype))
    a = empty(shape, dtype)
    fill(a, 0)
    return a


def write(dst, host):
    """Copy the host array `host` into the existing device array `dst` (same shape), in place:
    what a step's host half does to hand a replayed step new values (a learning rate, a step
    number) at addresses it already knows."""
    if _capturing is not None:
        _capture_violation("copies a host array to the device (write)")
    host = np.ascontiguousarray(host, dtype=dst.dtype).reshape(dst.shape)
    if isinstance(dst, np.ndarray):
        np.copyto(dst, host)
    else:
        dst.set(host)
    return dst


def fill(a, value):
    """a[...] = value on the device: a kernel on cuda (captured into a CUDA graph like one),
    a host fill on sim that a launch-list recording records."""
    if device() == "sim":
        from .sim import module as sim
        sim.record_fill(a, value)
    else:
        a.fill(value)


# ----------------------------------------------------------------- allocation and capture
# Every array an op makes for its outputs and workspaces comes from empty() or zeros() above.
# A memory plan (cupycnn.plan) installs itself as the allocator for the duration of a step and
# hands out its own buffers; `allocation_count` counts the arrays actually allocated, so a test
# can show that a planned step allocates nothing. While a step is being recorded (the sim
# launch list) or captured (a CUDA graph), what cannot be replayed is refused: a host read, a
# host-to-device copy, a synchronisation, an allocation outside the plan.

_allocator = None
_capturing = None            # what is recording, in words, or None
allocation_count = 0


class CaptureError(RuntimeError):
    """A step being recorded or captured did something a replay cannot repeat."""


def _count(a):
    global allocation_count
    allocation_count += 1
    return a


def _allocate(shape, dtype):
    """A new array from the device's allocator (CuPy's pool on cuda), counted."""
    return _count(xp().empty(shape, dtype=dtype))


def set_allocator(allocator):
    """Route empty() and zeros() through `allocator(shape, dtype) -> array` (None: the device's
    own). Returns the previous one. Used by cupycnn.plan."""
    global _allocator
    previous, _allocator = _allocator, allocator
    return previous


def set_capturing(what):
    """Mark a recording or capture as running (`what` names it in errors), or None. Returns the
    previous mark."""
    global _capturing
    previous, _capturing = _capturing, what
    return previous


def capturing():
    """What is recording or capturing now, or None."""
    return _capturing


def _capture_violation(action):
    raise CaptureError(f"the step {action} while {_capturing} runs; a replayed step cannot "
                       f"repeat that: move it out of the step (before or after it)")


def synchronize():
    """Wait until the GPU has finished all work queued on every stream of the current device:
    the compute stream, the loader's prefetch stream and the NCCL stream alike
    (cudaDeviceSynchronize). A no-op on the CPU devices."""
    if _capturing is not None:
        _capture_violation("synchronises with the device")
    if device() == "cuda":
        import cupy
        cupy.cuda.Device().synchronize()
