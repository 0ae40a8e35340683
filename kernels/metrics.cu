// metrics.cu -- running training metrics, kept on the device so a step needs no host sync.
//
//   accumulate_metrics: sums[0] += loss * N          (the loss is a batch mean: undo it)
//                       sums[1] += #{n : argmax_c logits[n, c] == labels[n]}
//                       sums[2] += N
//
// The sums are doubles: exact counts to 2^53 and a loss total that does not drift over an epoch.
// Reading them once per progress update (or per epoch) replaces a device-to-host copy per batch;
// in data-parallel training the per-rank sums are all-reduced, which makes epoch figures exact.
// Parallelisation: one block; each thread takes rows n = tid, tid + blockDim.x, ..., finds the
// row's argmax (the first maximum, as numpy.argmax), and block_sum combines the hits in a fixed
// order. A batch's logits are small (N x C floats), so one block is enough.
#include "common.cuh"

#define METRICS_THREADS 256

// logits in storage T (float or bf16; one template, two entry points); loss and sums as they
// are.
template <class T>
__device__ __forceinline__ void accumulate_metrics_body(const T* __restrict__ logits,
                                                        const int* __restrict__ labels,
                                                        const float* __restrict__ loss,
                                                        double* __restrict__ sums, int N, int C) {
  __shared__ float scratch[WARP_SIZE];
  float hits = 0.0f;
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    const T* row = logits + (long long)n * C;
    int best = 0;
    float best_value = to_float(row[0]);
    for (int c = 1; c < C; ++c) {
      const float v = to_float(row[c]);
      if (v > best_value) { best_value = v; best = c; }
    }
    hits += best == labels[n] ? 1.0f : 0.0f;
  }
  hits = block_sum(hits, scratch);
  if (threadIdx.x == 0) {
    sums[0] += (double)loss[0] * N;
    sums[1] += (double)hits;
    sums[2] += (double)N;
  }
}

extern "C" __global__ void accumulate_metrics(const float* __restrict__ logits,
                                              const int* __restrict__ labels,
                                              const float* __restrict__ loss,
                                              double* __restrict__ sums, int N, int C) {
  accumulate_metrics_body(logits, labels, loss, sums, N, C);
}

extern "C" __global__ void accumulate_metrics_bf16(const bf16* __restrict__ logits,
                                                   const int* __restrict__ labels,
                                                   const float* __restrict__ loss,
                                                   double* __restrict__ sums, int N, int C) {
  accumulate_metrics_body(logits, labels, loss, sums, N, C);
}
