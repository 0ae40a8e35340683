// emulator_probes.cu -- kernels that exercise the emulator's features and pitfalls (tests only).
#include "common.cuh"

// Block reduction: warp shuffles, dynamic shared memory, a float atomic across blocks.
extern "C" __global__ void shuffle_block_sum(const float* __restrict__ x, float* out, int n) {
  extern __shared__ float warp_sums[];
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i];
  v = warp_sum(v);
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x / WARP_SIZE) ? warp_sums[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) atomicAdd(out, v);
  }
}

// Every warp primitive once, and the counting barriers.
extern "C" __global__ void warp_ops(const int* in, int* out) {
  const int t = threadIdx.x, v = in[t];
  int o = 0;
  o += __shfl_sync(FULL_WARP_MASK, v, 3);                  // broadcast lane 3
  o += 10 * __shfl_up_sync(FULL_WARP_MASK, v, 1, 8);       // segments of 8 lanes
  o += 100 * __shfl_xor_sync(FULL_WARP_MASK, v, 4, 16);
  o += 1000 * __any_sync(FULL_WARP_MASK, v > 60);
  o += 10000 * __all_sync(FULL_WARP_MASK, v >= 0);
  o += 100000 * __shfl_down_sync(FULL_WARP_MASK, v, 2);
  const unsigned ballot = __ballot_sync(FULL_WARP_MASK, v % 3 == 0);
  const int c = __syncthreads_count(v % 2);
  const int a = __syncthreads_and(v < 1000), r = __syncthreads_or(v == 5);
  out[t] = o;
  out[64 + t] = c * 100 + a * 10 + r;
  out[128 + t] = (int)ballot;
}

// Static shared memory inside a device function template, a __device__ global, integer atomics.
__device__ unsigned int g_counter;

template <int N>
__device__ float block_max(float v) {
  __shared__ float red[N];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = N / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

extern "C" __global__ void normalise_by_block_max(const float* __restrict__ x, float* y, int* imax,
                                                  int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = i < n ? x[i] * x[i] : 0.0f;
  const float m = block_max<128>(v);
  if (i < n) y[i] = v / m;
  if (threadIdx.x == 0) {
    atomicMax(imax, (int)blockIdx.x);
    atomicAdd(&g_counter, 1u);
  }
}

extern "C" __global__ void read_and_reset_counter(unsigned* out) { *out = g_counter; g_counter = 0; }

// Threads that leave early do not block later barriers; ballot over the live lanes.
extern "C" __global__ void early_exit_ballot(const int* __restrict__ flags, unsigned* out, int n) {
  __shared__ unsigned count;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  if (i >= n) return;
  const unsigned b = __ballot_sync(__activemask(), flags[i] != 0);
  if (threadIdx.x % WARP_SIZE == 0) atomicAdd(&count, (unsigned)__popc(b));
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(out, count);
}

// Templates, launched through name expressions "axpy<float>" and "axpy<double>".
template <typename T>
__global__ void axpy(T a, const T* __restrict__ x, T* __restrict__ y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

// Shift by one through shared memory: correct with the barrier, a data race without it.
extern "C" __global__ void shift_right(const float* __restrict__ x, float* y, int n, int use_barrier) {
  __shared__ float s[256];
  const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : 0.0f;
  if (use_barrier) __syncthreads();
  if (i < n) y[i] = t > 0 ? s[t - 1] : 0.0f;
}

// Half the warp shuffles while the other half waits at __syncthreads: can never finish.
extern "C" __global__ void divergent_barrier(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) v += __shfl_xor_sync(FULL_WARP_MASK, v, 1);
  else __syncthreads();
  out[threadIdx.x] = v;
}

// Reads dynamic shared memory nothing wrote: poisoned (NaN) under the emulator.
extern "C" __global__ void read_uninitialised_shared(float* out) {
  extern __shared__ float scratch[];
  out[blockIdx.x * blockDim.x + threadIdx.x] = scratch[threadIdx.x];
}

// Kernel printf.
extern "C" __global__ void hello(int tag) {
  if (threadIdx.x == 0) printf("hello from block %d, tag %d\n", (int)blockIdx.x, tag);
}

// Reads static shared memory nothing wrote in this block: poisoned (NaN) under the emulator.
extern "C" __global__ void read_uninitialised_static_shared(float* out, int write_first) {
  __shared__ float tile[64];
  if (write_first) tile[threadIdx.x] = (float)threadIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}

// The same read in a function template and in a class template's member: g++ puts such
// statics outside the shared-memory section, so the emulator records them where they are
// declared (simt.h); they must be poisoned all the same.
template <int N>
__device__ float read_shared_in_template(int write_first) {
  __shared__ float tile[N];
  if (write_first) tile[threadIdx.x] = (float)threadIdx.x;
  __syncthreads();
  return tile[(threadIdx.x + 1) % blockDim.x];
}

template <class T>
struct SharedReader {
  __device__ static T read(int write_first) {
    __shared__ __align__(16) T tile[64];
    if (write_first) tile[threadIdx.x] = (T)threadIdx.x;
    __syncthreads();
    return tile[(threadIdx.x + 1) % blockDim.x];
  }
};

extern "C" __global__ void read_uninitialised_template_shared(float* out, int write_first) {
  const int i = 2 * (blockIdx.x * blockDim.x + threadIdx.x);
  out[i] = read_shared_in_template<64>(write_first);
  out[i + 1] = SharedReader<float>::read(write_first);
}

// The Philox generator of common.cuh, for comparison with reference/philox.py.
extern "C" __global__ void philox_probe(unsigned long long seed, unsigned long long stream,
                                        unsigned long long first, unsigned* words, float* uniforms,
                                        int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  words[i] = philox_word(seed, stream, first + i);
  uniforms[i] = philox_uniform(seed, stream, first + i);
}

// The four words of block first + i, and their uniforms (dropout's draws).
extern "C" __global__ void philox_block_probe(unsigned long long seed, unsigned long long stream,
                                              unsigned long long first, unsigned* words,
                                              float* uniforms, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint4 w = philox_block(seed, stream, first + i);
  const unsigned four[4] = {w.x, w.y, w.z, w.w};
  for (int j = 0; j < 4; ++j) {
    words[4 * i + j] = four[j];
    uniforms[4 * i + j] = philox_unit(four[j]);
  }
}

extern "C" __global__ void philox_raw(const unsigned* counters, const unsigned* keys, unsigned* out,
                                      int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint4 c = make_uint4(counters[4 * i], counters[4 * i + 1], counters[4 * i + 2], counters[4 * i + 3]);
  const uint4 r = philox4x32_10(c, make_uint2(keys[2 * i], keys[2 * i + 1]));
  out[4 * i] = r.x; out[4 * i + 1] = r.y; out[4 * i + 2] = r.z; out[4 * i + 3] = r.w;
}
