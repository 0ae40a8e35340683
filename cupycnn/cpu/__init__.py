"""The numpy device's training path: the references' maths, arranged for speed on a CPU.

`cupycnn/reference/` is the specification: plain NumPy, one readable expression per formula,
what the kernels and the gradient checks are held to. This package computes the same functions
the way a CPU likes them: convolutions as one matrix product per chunk of images on im2col
columns gathered into reused buffers (the input gradient as a convolution of dy, the weight
gradient from the forward's columns), batchnorm and the elementwise ops in float32 with `out=`
and no float64 temporaries, the batch split over threads (cupycnn.cpu.parallel).
tests/test_cpu_path.py holds every function here to its reference: to float64 rounding when
run in float64, to float32 tolerance in float32.

When it runs: the ops of `cupycnn.ops` call it on the numpy device for float32 arrays. Float64
arrays (the gradient checks) go to the reference itself, so a float64 run computes exactly the
specification. `set_enabled(False)` (or CUPYCNN_CPU_PATH=reference) sends float32 to the
reference too: the way to tell whether a difference comes from this package.

Threads: `set_num_threads(n)`; by default as many as BLAS is allowed (OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, threadpoolctl). See cupycnn.cpu.parallel.
"""
import os

import numpy as np

from .parallel import num_threads, set_num_threads  # noqa: F401

_enabled = os.environ.get("CUPYCNN_CPU_PATH", "fast").strip().lower() != "reference"


def set_enabled(enabled):
    """Run float32 ops on the numpy device through this package (True, the default) or
    through the references (False)."""
    global _enabled
    _enabled = bool(enabled)


def enabled():
    return _enabled


def fast(*arrays):
    """True when an op on these arrays takes this path: enabled, and every float array is
    float32."""
    if not _enabled:
        return False
    return all(a.dtype == np.float32 for a in arrays if a is not None and a.dtype.kind == "f")


__all__ = ["enabled", "fast", "num_threads", "set_enabled", "set_num_threads"]
