// elementwise.cu -- ReLU forward and backward, elementwise add.
//
//   relu_forward:  y[i]  = max(x[i], 0)
//   relu_backward: dx[i] = x[i] > 0 ? dy[i] : 0      (x: the forward input; the gradient at
//                                                    exactly 0 is taken as 0, as PyTorch does)
//   add:           out[i] = a[i] + b[i]               (out may alias a or b)
//   cast_to_bf16, cast_to_float32: storage conversions (round to nearest even; exact)
//
// Storage: each kernel is one template over the storage type T of its arrays, float or bf16
// (bf16.cuh); the entry points without a suffix store float, those with _bf16 store BF16. The
// arithmetic is float either way: load with to_float, compute, store with from_float<T> (one
// round to nearest even for BF16). cast_to_bf16 / cast_to_float32 convert between the two.
//
// Parallelisation: one thread per element in a grid-stride loop, so any grid size covers any n;
// consecutive threads touch consecutive elements (coalesced). These are memory-bound: each
// element costs 8 or 12 bytes of traffic for one operation (half of it with BF16 storage).
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n) \
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

template <class T>
__device__ __forceinline__ void relu_forward_body(const T* __restrict__ x, T* __restrict__ y,
                                                  int n) {
  GRID_STRIDE_LOOP(i, n) y[i] = from_float<T>(fmaxf(to_float(x[i]), 0.0f));
}

template <class T>
__device__ __forceinline__ void relu_backward_body(const T* __restrict__ x,
                                                   const T* __restrict__ dy, T* __restrict__ dx,
                                                   int n) {
  GRID_STRIDE_LOOP(i, n) dx[i] = to_float(x[i]) > 0.0f ? dy[i] : from_float<T>(0.0f);
}

template <class T>
__device__ __forceinline__ void add_body(const T* a, const T* b, T* out, int n) {
  GRID_STRIDE_LOOP(i, n) out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}

extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ y, int n) {
  relu_forward_body(x, y, n);
}
extern "C" __global__ void relu_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ y,
                                             int n) {
  relu_forward_body(x, y, n);
}

extern "C" __global__ void relu_backward(const float* __restrict__ x, const float* __restrict__ dy,
                                         float* __restrict__ dx, int n) {
  relu_backward_body(x, dy, dx, n);
}
extern "C" __global__ void relu_backward_bf16(const bf16* __restrict__ x,
                                              const bf16* __restrict__ dy,
                                              bf16* __restrict__ dx, int n) {
  relu_backward_body(x, dy, dx, n);
}

extern "C" __global__ void add(const float* a, const float* b, float* out, int n) {
  add_body(a, b, out, n);
}
extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* out, int n) {
  add_body(a, b, out, n);
}

extern "C" __global__ void cast_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, int n) {
  GRID_STRIDE_LOOP(i, n) y[i] = float_to_bf16(x[i]);
}
extern "C" __global__ void cast_to_float32(const bf16* __restrict__ x, float* __restrict__ y,
                                           int n) {
  GRID_STRIDE_LOOP(i, n) y[i] = bf16_to_float(x[i]);
}
