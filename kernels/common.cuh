// common.cuh -- the few helpers every kernel file shares.
//
// Kernels are plain CUDA C: float32, NCHW, `extern "C" __global__` entry points. The same text is
// compiled by NVRTC for the GPU (cuda device) and by g++ under include/simt.h for the CPU (sim
// device); SIMT_EMULATION is defined only in the latter. No standard headers: NVRTC has none.
#ifndef CUPYCNN_COMMON_CUH
#define CUPYCNN_COMMON_CUH
// struct bf16 and its conversions, for kernels that store bfloat16:
#include "bf16.cuh"

#define WARP_SIZE 32
#define FULL_WARP_MASK 0xffffffffu
#define FLOAT_LOWEST (-3.402823466e+38f)   // lowest finite float: the neutral element of max

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// A convolution's output epilogue, the same in every conv2d forward kernel (direct, tiled,
// tensor-core): y = acc + bias[o] (bias may be NULL), + residual[index] (may be NULL), then
// max(., 0) when relu. The inference epilogue of conv + bias (+ residual) + ReLU in one pass.
// The residual is stored as the output is (float, or bf16 in the tensor-core kernels' _bf16
// entry points); the sum is float, rounded once when the caller stores it.
template <class R>
__device__ __forceinline__ float conv_epilogue(float acc, const float* __restrict__ bias,
                                               const R* __restrict__ residual, int relu,
                                               int o, long long index) {
  float v = acc + (bias != NULL ? bias[o] : 0.0f);
  if (residual != NULL) v += to_float(residual[index]);
  return relu ? fmaxf(v, 0.0f) : v;
}

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

// ---------------------------------------------------------------------------------- random
// Philox4x32-10 (Salmon et al., SC 2011): a counter-based generator. The four output words are a
// pure function of a 128-bit counter and a 64-bit key, so thread i draws the numbers for element i
// without any state, and reference/philox.py draws the very same: a seed gives the same dropout
// mask or augmentation on cuda, sim and numpy.
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const unsigned hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
    const unsigned hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += PHILOX_W0;
    k.y += PHILOX_W1;
  }
  return c;
}

// The four words of one block for (seed, stream, block): counter (block, stream), key seed.
__device__ __forceinline__ uint4 philox_block(unsigned long long seed, unsigned long long stream,
                                              unsigned long long block) {
  const uint4 counter = make_uint4((unsigned)block, (unsigned)(block >> 32), (unsigned)stream,
                                   (unsigned)(stream >> 32));
  return philox4x32_10(counter, make_uint2((unsigned)seed, (unsigned)(seed >> 32)));
}

// Uniform in [0, 1) from a word: the top 24 bits times 2^-24, exact in float32.
__device__ __forceinline__ float philox_unit(unsigned word) {
  return (float)(word >> 8) * (1.0f / 16777216.0f);
}

// One word per index, the first of block `index` (reference random_words: the augmentations).
// Dropout packs four numbers into a block instead (reference packed_words, dropout.cu).
__device__ __forceinline__ unsigned philox_word(unsigned long long seed, unsigned long long stream,
                                                unsigned long long index) {
  return philox_block(seed, stream, index).x;
}

__device__ __forceinline__ float philox_uniform(unsigned long long seed, unsigned long long stream,
                                                unsigned long long index) {
  return philox_unit(philox_word(seed, stream, index));
}


// ------------------------------------------------------------------ double-precision sums
// Normalisation layers accumulate their statistics in double: sum(x^2) - sum(x)^2 / n cancels
// catastrophically in float when |mean| >> std, and a float sum over millions of elements loses
// the small terms.

// Sum of v over the 32 lanes of a warp, in double; every lane gets the total, in an order fixed by
// the lane numbers. All lanes must be active.
__device__ __forceinline__ double warp_sum_double(double v) {
  for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(FULL_WARP_MASK, v, offset);
  return v;
}

// Sum of v over each aligned group of WIDTH lanes (a power of two up to 32), in double; every
// lane of the group gets its total. All 32 lanes must be active. A fixed butterfly: the same
// bits every run.
template <int WIDTH>
__device__ __forceinline__ double group_sum_double(double v) {
#pragma unroll
  for (int offset = WIDTH / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(FULL_WARP_MASK, v, offset);
  return v;
}

// Two sums over the whole block at once, in double (one pair of barriers for both); every thread
// gets both totals. Same rules as block_sum: whole warps, at most 1024 threads, blockDim.y =
// blockDim.z = 1, a fixed summation order. `scratch` is __shared__ double [2 * WARP_SIZE].
__device__ __forceinline__ void block_sum_pair_double(double& a, double& b, double* scratch) {
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int num_warps = blockDim.x / WARP_SIZE;
  a = warp_sum_double(a);
  b = warp_sum_double(b);
  __syncthreads();                     // scratch may still be read by a previous call
  if (lane == 0) {
    scratch[warp] = a;
    scratch[WARP_SIZE + warp] = b;
  }
  __syncthreads();
  a = warp_sum_double(lane < num_warps ? scratch[lane] : 0.0);
  b = warp_sum_double(lane < num_warps ? scratch[WARP_SIZE + lane] : 0.0);
}

// ------------------------------------------------------------------ strided 2-D walks
// A flat index e = row * width + col, kept split into (row, col) while it advances by a fixed
// stride: the loop of a block over a [rows, width] slice whose rows are not adjacent in memory
// (one channel of NCHW: a row per sample, H*W wide) needs both parts to address the element,
// and a 32-bit division per element costs more than the load it addresses in a memory-bound
// kernel. One division at construction, then an add and a compare per step.
struct RowColCursor {
  int row, col;
  int width, step_row, step_col;

  __device__ __forceinline__ RowColCursor(int e, int stride, int width_)
      : row(e / width_), col(e % width_), width(width_), step_row(stride / width_),
        step_col(stride % width_) {}

  __device__ __forceinline__ void advance() {
    row += step_row;
    col += step_col;
    if (col >= width) {
      col -= width;
      ++row;
    }
  }
};

#endif  // CUPYCNN_COMMON_CUH
