// pool.cu -- max, average and global average pooling, forward and backward (NCHW, float32).
//
// Geometry, per axis (height shown; width alike): kernel k, stride s, padding p,
//   out_height = (height + 2p - k) / s + 1            (floor: PyTorch's ceil_mode=False)
//   window oh covers input rows oh*s - p ... oh*s - p + k - 1 (rows outside the input: padding)
// An input row ih is covered by the windows oh_begin <= oh < oh_end with
//   oh_begin = ih + p < k ? 0 : (ih + p - k) / s + 1,  oh_end = min((ih + p) / s + 1, out_height)
// (at most ceil(k / s) of them: overlapping windows when s < k).
//
//   max_pool2d_forward:  y[oh, ow] = max of x over the window; argmax[oh, ow] = ih * width + iw
//                        of the first maximum in window order (row-major), as PyTorch. Padding
//                        is -inf, which never wins: only the real part of the window is read,
//                        the first real element starts as the maximum, and a later one replaces
//                        it only when strictly greater (or NaN: a NaN propagates, first NaN wins).
//   max_pool2d_backward: dx[ih, iw] = sum of dy[oh, ow] over the windows covering (ih, iw)
//                        whose argmax is (ih, iw).
//   avg_pool2d_forward:  y[oh, ow] = (sum of x over the real part of the window) / (kh * kw):
//                        padding counts as zeros (count_include_pad=True, PyTorch's default).
//   avg_pool2d_backward: dx[ih, iw] = sum of dy[oh, ow] over the windows covering (ih, iw),
//                        divided by kh * kw.
//   global_avg_pool2d_forward:  y[plane] = mean of x over the plane's height * width elements.
//   global_avg_pool2d_backward: dx[plane, h, w] = dy[plane] / (height * width).
// A plane is one (n, c) pair; planes = N * C.
//
// Parallelisation:
// - Forward: one thread per output element, in a grid-stride loop. Consecutive threads take
//   consecutive ow: a warp reads the same input rows at consecutive windows (stride s floats
//   apart) and writes y contiguously.
// - Backward: one thread per INPUT element, gathering from the at most ceil(kh/sh) ceil(kw/sw)
//   windows covering it in a fixed order (oh, then ow): each dx element is written once by one
//   thread, so overlapping windows need no atomics and the sums are deterministic.
// - No shared memory: pooling does one comparison or addition per element read, so it is
//   memory-bound, and its only reuse, the overlap of neighbouring windows ((k/s)^2 reads per
//   input element, 2.25 for the usual 3x3/2), is served by L1. Staging tiles would add a barrier
//   and index arithmetic and save no DRAM traffic.
// - Global average pooling: one warp per plane (POOL_THREADS / 32 planes per block), lanes
//   striding over the plane (coalesced), warp_sum in a fixed order. A warp, not a block: global
//   pooling meets small planes (7x7 in ResNets) in large numbers (N * C).
//
// Indices: a plane's elements fit in int (the wrapper checks it); offsets of planes and the
// grid-stride index over all planes are long long, as N * C * H * W can pass 2^31.
#include "common.cuh"

#define POOL_THREADS 256                                      // threads per block, every kernel
#define GLOBAL_POOL_PLANES_PER_BLOCK (POOL_THREADS / WARP_SIZE)   // one warp per plane

// The windows covering input position `i` (a row or a column) along one axis: [*begin, *end).
__device__ __forceinline__ void covering_windows(int i, int kernel, int stride, int pad, int out,
                                                 int* begin, int* end) {
  *begin = i + pad < kernel ? 0 : (i + pad - kernel) / stride + 1;
  *end = min((i + pad) / stride + 1, out);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
max_pool2d_forward(const float* __restrict__ x, float* __restrict__ y, int* __restrict__ argmax,
                   int planes, int height, int width, int out_height, int out_width,
                   int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w) {
  const int out_plane = out_height * out_width;
  const long long total = (long long)planes * out_plane;
  for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < total;
       o += (long long)blockDim.x * gridDim.x) {
    const long long plane = o / out_plane;
    const int r = (int)(o - plane * out_plane);
    const int oh = r / out_width, ow = r - oh * out_width;
    const int h0 = oh * stride_h - pad_h, w0 = ow * stride_w - pad_w;
    // The real part of the window (never empty: padding is at most half the kernel).
    const int h_begin = max(h0, 0), h_end = min(h0 + kernel_h, height);
    const int w_begin = max(w0, 0), w_end = min(w0 + kernel_w, width);
    const float* xp = x + plane * height * width;
    int best_index = h_begin * width + w_begin;
    float best = xp[best_index];
    for (int h = h_begin; h < h_end; ++h) {
      for (int w = w_begin; w < w_end; ++w) {
        const int index = h * width + w;
        const float v = xp[index];
        // Strictly greater: ties keep the first maximum. A NaN replaces a number, not a NaN.
        if (v > best || (isnan(v) && !isnan(best))) {
          best = v;
          best_index = index;
        }
      }
    }
    y[o] = best;
    argmax[o] = best_index;
  }
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
max_pool2d_backward(const float* __restrict__ dy, const int* __restrict__ argmax,
                    float* __restrict__ dx, int planes, int height, int width, int out_height,
                    int out_width, int kernel_h, int kernel_w, int stride_h, int stride_w,
                    int pad_h, int pad_w) {
  const int in_plane = height * width, out_plane = out_height * out_width;
  const long long total = (long long)planes * in_plane;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const long long plane = i / in_plane;
    const int r = (int)(i - plane * in_plane);
    const int ih = r / width, iw = r - ih * width;
    int oh_begin, oh_end, ow_begin, ow_end;
    covering_windows(ih, kernel_h, stride_h, pad_h, out_height, &oh_begin, &oh_end);
    covering_windows(iw, kernel_w, stride_w, pad_w, out_width, &ow_begin, &ow_end);
    const float* dyp = dy + plane * out_plane;
    const int* argp = argmax + plane * out_plane;
    float acc = 0.0f;
    for (int oh = oh_begin; oh < oh_end; ++oh)
      for (int ow = ow_begin; ow < ow_end; ++ow)
        if (argp[oh * out_width + ow] == r) acc += dyp[oh * out_width + ow];
    dx[i] = acc;
  }
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
avg_pool2d_forward(const float* __restrict__ x, float* __restrict__ y, int planes, int height,
                   int width, int out_height, int out_width, int kernel_h, int kernel_w,
                   int stride_h, int stride_w, int pad_h, int pad_w) {
  const int out_plane = out_height * out_width;
  const float window_size = (float)(kernel_h * kernel_w);   // padding included in the count
  const long long total = (long long)planes * out_plane;
  for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < total;
       o += (long long)blockDim.x * gridDim.x) {
    const long long plane = o / out_plane;
    const int r = (int)(o - plane * out_plane);
    const int oh = r / out_width, ow = r - oh * out_width;
    const int h0 = oh * stride_h - pad_h, w0 = ow * stride_w - pad_w;
    const int h_begin = max(h0, 0), h_end = min(h0 + kernel_h, height);
    const int w_begin = max(w0, 0), w_end = min(w0 + kernel_w, width);
    const float* xp = x + plane * height * width;
    float acc = 0.0f;                                  // padded elements add zero: skipped
    for (int h = h_begin; h < h_end; ++h)
      for (int w = w_begin; w < w_end; ++w) acc += xp[h * width + w];
    y[o] = acc / window_size;
  }
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
avg_pool2d_backward(const float* __restrict__ dy, float* __restrict__ dx, int planes, int height,
                    int width, int out_height, int out_width, int kernel_h, int kernel_w,
                    int stride_h, int stride_w, int pad_h, int pad_w) {
  const int in_plane = height * width, out_plane = out_height * out_width;
  const float window_size = (float)(kernel_h * kernel_w);
  const long long total = (long long)planes * in_plane;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const long long plane = i / in_plane;
    const int r = (int)(i - plane * in_plane);
    const int ih = r / width, iw = r - ih * width;
    int oh_begin, oh_end, ow_begin, ow_end;
    covering_windows(ih, kernel_h, stride_h, pad_h, out_height, &oh_begin, &oh_end);
    covering_windows(iw, kernel_w, stride_w, pad_w, out_width, &ow_begin, &ow_end);
    const float* dyp = dy + plane * out_plane;
    float acc = 0.0f;
    for (int oh = oh_begin; oh < oh_end; ++oh)
      for (int ow = ow_begin; ow < ow_end; ++ow) acc += dyp[oh * out_width + ow];
    dx[i] = acc / window_size;
  }
}

// Grid: ceil(planes / GLOBAL_POOL_PLANES_PER_BLOCK) blocks of POOL_THREADS.
extern "C" __global__ void __launch_bounds__(POOL_THREADS)
global_avg_pool2d_forward(const float* __restrict__ x, float* __restrict__ y, int planes,
                          int plane_size) {
  const int lane = threadIdx.x % WARP_SIZE;
  const long long plane = (long long)blockIdx.x * GLOBAL_POOL_PLANES_PER_BLOCK
                          + threadIdx.x / WARP_SIZE;
  if (plane >= planes) return;          // the whole warp leaves together: warp_sum stays full
  const float* xp = x + plane * plane_size;
  float acc = 0.0f;
  for (int e = lane; e < plane_size; e += WARP_SIZE) acc += xp[e];
  acc = warp_sum(acc);
  if (lane == 0) y[plane] = acc / (float)plane_size;
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
global_avg_pool2d_backward(const float* __restrict__ dy, float* __restrict__ dx, int planes,
                           int plane_size) {
  const long long total = (long long)planes * plane_size;
  const float size = (float)plane_size;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x)
    dx[i] = dy[i / plane_size] / size;
}
