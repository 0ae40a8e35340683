// common.cuh -- the few helpers every kernel file shares.
//
// Kernels are plain CUDA C: float32, NCHW, `extern "C" __global__` entry points. The same text is
// compiled by NVRTC for the GPU (cuda device) and by g++ under include/simt.h for the CPU (sim
// device); SIMT_EMULATION is defined only in the latter. No standard headers: NVRTC has none.
#ifndef CUPYCNN_COMMON_CUH
#define CUPYCNN_COMMON_CUH

#define WARP_SIZE 32
#define FULL_WARP_MASK 0xffffffffu
#define FLOAT_LOWEST (-3.402823466e+38f)   // lowest finite float: the neutral element of max

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Sum of v over the 32 lanes of a warp; every lane gets the total. All lanes must be active.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(FULL_WARP_MASK, v, offset);
  return v;
}

// Sum of v over the whole block; every thread gets the total. blockDim.x must be a multiple of
// 32 (whole warps) and at most 1024; blockDim.y = blockDim.z = 1. `scratch` is __shared__ float
// [WARP_SIZE]. The summation order is fixed by the block size, so results are deterministic.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int num_warps = blockDim.x / WARP_SIZE;
  v = warp_sum(v);
  __syncthreads();                     // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < num_warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

#endif  // CUPYCNN_COMMON_CUH
