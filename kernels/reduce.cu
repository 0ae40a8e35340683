// reduce.cu -- per-channel sums (the gradient of a bias; float32 or BF16 storage).
//
//   channel_sum: out[c] = sum over o < outer, i < inner of x[(o * channels + c) * inner + i]
//
// x viewed as [outer, channels, inner]: a dense layer's dy is [N, C] (outer N, inner 1) and a
// convolution's dy is [N, C, H, W] (outer N, inner H*W); either way out[c] is that channel's bias
// gradient. Parallelisation: one block per channel; its threads stride over the outer*inner
// elements of the channel (consecutive threads read consecutive i when inner is large), then
// block_sum combines them in a fixed order: the result does not depend on timing.
#include "common.cuh"

#define CHANNEL_SUM_THREADS 256

// x: float, or BF16 storage (channel_sum_bf16: a bias gradient under precision bf16); the sum
// and out are float either way.
template <class T>
__device__ __forceinline__ void channel_sum_body(const T* __restrict__ x, float* __restrict__ out,
                                                 int outer, int channels, int inner,
                                                 float* scratch) {
  const int c = blockIdx.x;
  const int count = outer * inner;
  float acc = 0.0f;
  for (int e = threadIdx.x; e < count; e += blockDim.x) {
    const int o = e / inner, i = e - o * inner;
    acc += to_float(x[((long long)o * channels + c) * inner + i]);
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[c] = acc;
}

extern "C" __global__ void channel_sum(const float* __restrict__ x, float* __restrict__ out,
                                       int outer, int channels, int inner) {
  __shared__ float scratch[WARP_SIZE];
  channel_sum_body(x, out, outer, channels, inner, scratch);
}

extern "C" __global__ void channel_sum_bf16(const bf16* __restrict__ x, float* __restrict__ out,
                                            int outer, int channels, int inner) {
  __shared__ float scratch[WARP_SIZE];
  channel_sum_body(x, out, outer, channels, inner, scratch);
}
