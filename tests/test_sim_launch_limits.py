"""The emulator refuses the launches a GPU refuses, with CUDA's words and the reason:
__launch_bounds__, block and grid limits, dynamic shared memory over 48 KB without an opt-in."""
import numpy as np
import pytest

from cupycnn.sim import module as sim

SOURCE = r'''
#define THREADS 128
extern "C" __global__ void __launch_bounds__(THREADS) bounded(float* y) {
  y[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
extern "C" __global__ void free_size(float* y) { if (threadIdx.x == 0) y[0] = 2.0f; }
extern "C" __global__ void with_shared(float* y) {
  extern __shared__ float buffer[];
  buffer[threadIdx.x] = 3.0f;
  __syncthreads();
  if (threadIdx.x == 0) y[0] = buffer[0];
}
'''


@pytest.fixture(scope="module")
def module():
    return sim.Module(SOURCE, name="limits.cu")


def test_launch_bounds_are_enforced(module):
    kernel = module.get_function("bounded")
    assert kernel.max_threads_per_block == 128
    y = np.zeros(256, np.float32)
    kernel((2,), (128,), (y,))
    assert (y == 1).all()
    with pytest.raises(sim.SimLaunchError,
                       match=r"CUDA_ERROR_INVALID_VALUE.*256 threads.*__launch_bounds__\(128\)"):
        kernel((1,), (256,), (y,))
    assert module.get_function("free_size").max_threads_per_block == 1024


@pytest.mark.parametrize("grid, block, why", [
    ((1,), (1025,), "at most 1024 threads"),
    ((1,), (1, 1, 65), "z up to 64"),
    ((1,), (64, 32), "at most 1024 threads"),
    ((1, 65536), (1,), "y and z up to 65535"),
    ((1, 1, 65536), (1,), "y and z up to 65535"),
    ((2**31,), (1,), "x up to 2147483647"),
])
def test_block_and_grid_limits(module, grid, block, why):
    with pytest.raises(sim.SimLaunchError, match=why):
        module.get_function("free_size")(grid, block, (np.zeros(1, np.float32),))


def test_dynamic_shared_memory_over_48_kb_needs_an_opt_in(module):
    kernel = module.get_function("with_shared")
    y = np.zeros(1, np.float32)
    kernel((1,), (32,), (y,), shared_mem=48 * 1024)
    with pytest.raises(sim.SimLaunchError, match="49156 bytes.*without an opt-in"):
        kernel((1,), (32,), (y,), shared_mem=48 * 1024 + 4)
    kernel.max_dynamic_shared_size_bytes = 64 * 1024
    kernel((1,), (32,), (y,), shared_mem=60 * 1024)
    assert y[0] == 3
    with pytest.raises(sim.SimLaunchError, match="at most 232448"):
        kernel.max_dynamic_shared_size_bytes = 300 * 1024
