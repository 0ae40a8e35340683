// elementwise.cu -- ReLU forward and backward, elementwise add.
//
//   relu_forward:  y[i]  = max(x[i], 0)
//   relu_backward: dx[i] = x[i] > 0 ? dy[i] : 0      (x: the forward input; the gradient at
//                                                    exactly 0 is taken as 0, as PyTorch does)
//   add:           out[i] = a[i] + b[i]               (out may alias a or b)
//
// Parallelisation: one thread per element in a grid-stride loop, so any grid size covers any n;
// consecutive threads touch consecutive elements (coalesced). These are memory-bound: each
// element costs 8 or 12 bytes of traffic for one operation.
#include "common.cuh"

extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ y, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    y[i] = fmaxf(x[i], 0.0f);
}

extern "C" __global__ void relu_backward(const float* __restrict__ x, const float* __restrict__ dy,
                                         float* __restrict__ dx, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

extern "C" __global__ void add(const float* a, const float* b, float* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    out[i] = a[i] + b[i];
}
