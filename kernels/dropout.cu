// dropout.cu -- inverted dropout, forward and backward (any shape, float32, contiguous).
//
//   dropout_forward:  y[i]  = keep(i) ? x[i]  * scale : 0
//   dropout_backward: dx[i] = keep(i) ? dy[i] * scale : 0
//   keep(i) = philox_unit(word i mod 4 of philox_block(seed, stream, i div 4)) >= p,
//   scale = 1 / (1 - p)  (0 when p = 1)
//
// The mask is never stored: element i's uniform number is a pure function of (seed, stream, i)
// (Philox4x32-10, common.cuh; four elements share a block, as curand_uniform4 draws them), so
// backward draws the very same mask again from the same seed and stream. That costs a few integer
// operations per element, which a memory-bound kernel hides, and saves a mask of N bytes (or N/8)
// per dropout layer kept alive from forward to backward. reference/dropout.py draws the same
// numbers, so one (seed, stream) gives the same mask on cuda, sim and numpy; the caller uses a new
// stream for every forward call (a fresh mask).
//
// The stream is read from device memory (`stream` points to it), not passed by value: a
// replayed step (a CUDA graph, the sim launch list) relaunches the same arguments, so the layer
// keeps its call counter on the device and dropout_next_stream advances it there, one thread,
// before each training forward: state[1] = state[0] | stream_high (the rank's bits, random.py),
// state[0] += 1. Forward and backward then read state[1].
//
// Parallelisation: one thread per block of four elements (4b .. 4b + 3, the last one cut at n) in
// a grid-stride loop: one Philox block gives the thread its four numbers, a quarter of the rounds
// of one block per element. b is long long: it is the Philox counter, so it must be the true
// flat index div 4 even past 2^31.
#include "common.cuh"

// Forward and backward are one map, out = keep ? in * scale : 0, templated over the storage T
// (float or bf16, bf16.cuh; FP32 arithmetic, one rounding when stored); the entry points
// without a suffix store float, the _bf16 ones BF16.
template <class T>
__device__ __forceinline__ void dropout_body(const T* __restrict__ in, T* __restrict__ out,
                                             long long n, float p, float scale,
                                             unsigned long long seed,
                                             const unsigned long long* __restrict__ stream) {
  const unsigned long long s = *stream;
  const long long blocks = n / 4 + (n % 4 != 0);
  for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < blocks;
       b += (long long)blockDim.x * gridDim.x) {
    const uint4 w = philox_block(seed, s, (unsigned long long)b);
    const unsigned words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const long long i = 4 * b + j;
      if (i < n)
        out[i] = from_float<T>(philox_unit(words[j]) >= p ? to_float(in[i]) * scale : 0.0f);
    }
  }
}

extern "C" __global__ void dropout_forward(const float* __restrict__ x, float* __restrict__ y,
                                           long long n, float p, float scale,
                                           unsigned long long seed,
                                           const unsigned long long* __restrict__ stream) {
  dropout_body(x, y, n, p, scale, seed, stream);
}

extern "C" __global__ void dropout_backward(const float* __restrict__ dy, float* __restrict__ dx,
                                            long long n, float p, float scale,
                                            unsigned long long seed,
                                            const unsigned long long* __restrict__ stream) {
  dropout_body(dy, dx, n, p, scale, seed, stream);
}

extern "C" __global__ void dropout_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ y,
                                                long long n, float p, float scale,
                                                unsigned long long seed,
                                                const unsigned long long* __restrict__ stream) {
  dropout_body(x, y, n, p, scale, seed, stream);
}

extern "C" __global__ void dropout_backward_bf16(const bf16* __restrict__ dy,
                                                 bf16* __restrict__ dx, long long n, float p,
                                                 float scale, unsigned long long seed,
                                                 const unsigned long long* __restrict__ stream) {
  dropout_body(dy, dx, n, p, scale, seed, stream);
}

// One thread: state = [calls, stream]. The stream of the forward about to run, then the count.
extern "C" __global__ void dropout_next_stream(unsigned long long* state,
                                               unsigned long long stream_high) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    state[1] = state[0] | stream_high;
    state[0] += 1;
  }
}
