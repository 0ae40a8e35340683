"""Comparisons shared by the kernel tests, and a layer with a known wrong backward."""
import contextlib

import numpy as np
import pytest

import cupycnn
from cupycnn.layers import Layer


def cuda_param(value="cuda"):
    """The cuda case of a device parametrisation, marked `cuda`: the GPU where one is usable,
    else a fake one (tests/fake_cupy.py), which conftest installs for the test."""
    return pytest.param(value, id="cuda" if cupycnn.cuda_available() else "cuda-fake",
                        marks=[pytest.mark.cuda])


# Every device, for tests parametrised over `device` (a parameter or a fixture of that name).
DEVICES = ("numpy", "sim", cuda_param())

# Kernel against float64 reference, float32 arithmetic: relative error of the whole tensor, and
# every element within ATOL_SCALE * rms(ref) + RTOL * |ref|.
REL_ERR = 1e-5
RTOL = 1e-4
ATOL_SCALE = 1e-5


def rel_err(out, ref):
    out = np.asarray(cupycnn.asnumpy(out), np.float64)
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)


def assert_matches(out, ref, name="output", rel=REL_ERR, rtol=RTOL, atol_scale=ATOL_SCALE):
    """`out` (any device) against the float64 `ref`: shape, no NaN (an unwritten poisoned
    element), relative error and elementwise closeness."""
    got = np.asarray(cupycnn.asnumpy(out), np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape}, reference {ref.shape}"
    nan = np.isnan(got) & ~np.isnan(ref)
    assert not nan.any(), (f"{name}: {int(nan.sum())} of {got.size} elements are NaN "
                           f"(never written?), first at {np.argwhere(nan)[0].tolist()}")
    if got.size == 0:
        return
    err = rel_err(got, ref)
    assert err < rel, f"{name}: relative error {err:.3g} >= {rel:g}"
    rms = np.sqrt(np.mean(ref ** 2))
    bad = np.abs(got - ref) > atol_scale * rms + rtol * np.abs(ref)
    assert not bad.any(), (f"{name}: {int(bad.sum())} elements off, worst at "
                           f"{np.unravel_index(np.argmax(np.abs(got - ref)), got.shape)}")


def randn(rng, *shape, dtype=np.float32):
    """Standard normal host array (never zeros)."""
    return rng.standard_normal(shape).astype(dtype)


def to_device(*arrays):
    return tuple(cupycnn.asarray(a) for a in arrays)


def assert_all_match(outs, refs, names):
    """assert_matches for each (out, ref, name) of three parallel sequences."""
    assert len(outs) == len(refs) == len(names)
    for out, ref, name in zip(outs, refs, names):
        assert_matches(out, ref, name)


class WrongScale(Layer):
    """y = 2x with a backward that forgets the 2: a bug a gradient check must catch."""

    def forward(self, x, training=True):
        self.save_for_backward()
        return 2 * x

    def backward(self, dy):
        self.saved()
        return dy


class _LaunchNames:
    """A log for runtime.record_launches (which takes a set): every launch's kernel, in order."""

    def __init__(self):
        self.names = []

    def add(self, item):                 # item: (source, kernel, device)
        self.names.append(item[1])


@contextlib.contextmanager
def recorded_launches():
    """with recorded_launches() as names: the kernels launched inside the block, in order (then
    recording stops, as runtime.record_launches(None) does)."""
    from cupycnn import runtime
    log = _LaunchNames()
    runtime.record_launches(log)
    try:
        yield log.names
    finally:
        runtime.record_launches(None)
