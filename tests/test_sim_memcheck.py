"""The emulator's memory check (sim.set_memory_check): a kernel that writes outside the arrays it
was given is an error naming the argument, as compute-sanitizer's memcheck reports it on a GPU,
where without the check it corrupts the host heap silently (the sim fuzz's heap corruption)."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import cupycnn
from cupycnn import sim

CODE = r"""
extern "C" __global__ void write_range(float* out, int lo, int hi) {
  int i = blockIdx.x * blockDim.x + threadIdx.x + lo;
  if (i < hi) out[i] = (float)i;
}
extern "C" __global__ void shift_copy(float* out, const float* in, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = 2.0f * in[i];
}
extern "C" __global__ void alignment(unsigned long long* out, const float* a, const float* b) {
  if (threadIdx.x == 0) { out[0] = (unsigned long long)a % 256; out[1] = (unsigned long long)b % 256; }
}
"""


@pytest.fixture
def module():
    sim.set_threads(1)
    return sim.Module(CODE, name="memcheck_probe.cu")


def _write(module, out, lo, hi):
    module.get_function("write_range")((1,), (64,), (out, np.int32(lo), np.int32(hi)))


def test_writes_past_the_end_or_before_the_start_name_the_argument(module, monkeypatch):
    # The guard zones from the canary's first places: a byte written that equals the canary's
    # byte there is no change (1 in 256 for the low bytes of 8.0f, 0), so the counts below hold
    # for these places; where earlier checked launches in the process left the zones would vary.
    monkeypatch.setattr(sim.module, "_zones", itertools.count())
    out = np.zeros(8, np.float32)
    with sim.memory_check():
        _write(module, out, 0, 8)                          # inside: no error
        with pytest.raises(sim.SimMemoryError, match=r"write_range .* wrote outside its "
                           r"arguments: 12 bytes changed 1 to 12 bytes past the end of argument "
                           r"0 \(an array of 32 bytes\)$"):
            _write(module, out, 0, 11)
        assert out.tolist() == list(range(8))              # what it wrote inside is kept
        with pytest.raises(sim.SimMemoryError, match=r"8 bytes changed 1 to 8 bytes before "
                           r"argument 0 \(an array of 32 bytes\)$"):
            _write(module, out, -2, 3)


def test_a_write_through_an_empty_array_is_caught(module):
    with sim.memory_check(), pytest.raises(sim.SimMemoryError, match="past the end of argument 0 "
                                           r"\(an array of 0 bytes\)"):
        _write(module, np.zeros(0, np.float32), 0, 1)


def test_the_gemm_over_an_empty_batch_found_by_the_fuzz_is_clean_under_the_check():
    # Without its fix this raised SimMemoryError (25 floats through a 0-element output).
    from cupycnn.ops import gemm
    cupycnn.use("sim")
    sim.set_threads(1)
    with sim.memory_check():
        assert gemm.gemm(np.ones((0, 5, 2), np.float32), np.ones((5, 2), np.float32),
                         transpose_b=True).shape == (0, 5, 5)


def test_aliased_arguments_stay_aliased_and_alignment_is_kept(module):
    x = np.arange(10, dtype=np.float32)
    expected = x.copy()
    expected[:9] = 2 * x[1:]
    with sim.memory_check():
        module.get_function("shift_copy")((1,), (32,), (x[:9], x[1:], np.int32(9)))
        # in place, out and in overlapping by all but one element: one buffer for both
        assert x.tolist() == expected.tolist()
        y = np.zeros(2, np.uint64)
        buffer = np.zeros(100, np.float32)
        module.get_function("alignment")((1,), (32,), (y, buffer[3:], buffer[64:]))
        assert y.tolist() == [buffer[3:].ctypes.data % 256, buffer[64:].ctypes.data % 256]


def test_recorded_launches_are_checked_when_replayed(module):
    out = np.zeros(4, np.float32)
    bad = module.get_function("write_range").prepare((1,), (64,), (out, np.int32(0), np.int32(6)))
    bad()                                               # unchecked: the overrun goes unseen
    with sim.memory_check(), pytest.raises(sim.SimMemoryError):
        bad()


def test_results_of_real_ops_are_the_same_under_the_check(rng):
    from cupycnn.ops import conv2d
    cupycnn.use("sim")
    sim.set_threads(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    plain = conv2d.conv2d_forward(x, w, b, 1, 1)
    with sim.memory_check():
        checked = conv2d.conv2d_forward(x, w, b, 1, 1)
    assert np.array_equal(plain, checked)


def test_off_by_default_on_with_the_environment_variable():
    assert not sim.module._config.memory_check
    with sim.memory_check():
        assert sim.module._config.memory_check
    assert not sim.module._config.memory_check
    probe = "from cupycnn.sim import module; print(module._config.memory_check)"
    env = dict(os.environ, CUPYCNN_SIM_MEMCHECK="1")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"


def test_kernel_tests_run_under_the_check(kernel_device):
    # sim's launches, and the fake GPU's (its kernels are sim's); a real GPU ignores it.
    assert sim.module._config.memory_check
