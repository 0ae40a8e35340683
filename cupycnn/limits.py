"""A GPU's limits that the host code checks before a launch, in one place (CUDA programming
guide, compute capability 8.0 and 9.0), and the kernels' 32-bit index type."""

INT32_MAX = 2**31 - 1                    # kernel parameters that are sizes, index arithmetic
GRID_X_MAX = 2**31 - 1                   # gridDim.x
GRID_YZ_MAX = 65535                      # gridDim.y and gridDim.z
MAX_THREADS_PER_BLOCK = 1024
DEFAULT_DYNAMIC_SHARED_BYTES = 48 * 1024     # without cudaFuncSetAttribute
MAX_DYNAMIC_SHARED_BYTES = 227 * 1024        # sm_90's opt-in ceiling (sm_80: 163 KB)
