// pool.cu -- max, average and global average pooling, forward and backward (NCHW; float32 or
// BF16 storage).
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
// Storage: each kernel is a template over the storage type T of x, y, dy and dx (float or bf16,
// bf16.cuh); the entry points without a suffix store float, the _bf16 ones BF16. Arithmetic is
// float: the window sums and the maxima of decoded values, rounded once when stored. argmax stays
// int.
//
// Indices: a plane's elements fit in int (the wrapper checks it); offsets of planes and the
// grid-stride index over all planes are long long, as N * C * H * W can pass 2^31.
#include "common.cuh"

#define POOL_THREADS 256                                      // threads per block, every kernel
#define GLOBAL_POOL_PLANES_PER_BLOCK (POOL_THREADS / WARP_SIZE)   // one warp per plane

// The sizes every windowed kernel takes, gathered once per thread.
struct PoolShape {
  int height, width, out_height, out_width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
};

// Output element o of the flat [planes, out_height, out_width] index: its plane, and its window
// clipped to the image, rows [h_begin, h_end) and columns [w_begin, w_end) (never empty: the
// padding is at most half the kernel).
struct Window {
  long long plane;
  int h_begin, h_end, w_begin, w_end;
};

__device__ __forceinline__ Window window_of(long long o, const PoolShape& s) {
  const int out_plane = s.out_height * s.out_width;
  Window win;
  win.plane = o / out_plane;
  const int r = (int)(o - win.plane * out_plane);
  const int oh = r / s.out_width, ow = r - oh * s.out_width;
  const int h0 = oh * s.stride_h - s.pad_h, w0 = ow * s.stride_w - s.pad_w;
  win.h_begin = max(h0, 0);
  win.h_end = min(h0 + s.kernel_h, s.height);
  win.w_begin = max(w0, 0);
  win.w_end = min(w0 + s.kernel_w, s.width);
  return win;
}

// The windows covering input position `i` (a row or a column) along one axis: [*begin, *end).
__device__ __forceinline__ void covering_windows(int i, int kernel, int stride, int pad, int out,
                                                 int* begin, int* end) {
  *begin = i + pad < kernel ? 0 : (i + pad - kernel) / stride + 1;
  *end = min((i + pad) / stride + 1, out);
}

// Input element i of the flat [planes, height, width] index: its plane, its offset r within the
// plane, and the output windows covering it, rows [oh_begin, oh_end), columns [ow_begin, ow_end).
struct Covering {
  long long plane;
  int r, oh_begin, oh_end, ow_begin, ow_end;
};

__device__ __forceinline__ Covering covering_of(long long i, const PoolShape& s) {
  const int in_plane = s.height * s.width;
  Covering cov;
  cov.plane = i / in_plane;
  cov.r = (int)(i - cov.plane * in_plane);
  const int ih = cov.r / s.width, iw = cov.r - ih * s.width;
  covering_windows(ih, s.kernel_h, s.stride_h, s.pad_h, s.out_height, &cov.oh_begin, &cov.oh_end);
  covering_windows(iw, s.kernel_w, s.stride_w, s.pad_w, s.out_width, &cov.ow_begin, &cov.ow_end);
  return cov;
}

template <class T>
__device__ __forceinline__ void max_pool2d_forward_body(const T* __restrict__ x, T* __restrict__ y,
                                                        int* __restrict__ argmax, int planes,
                                                        const PoolShape& s) {
  const long long total = (long long)planes * (s.out_height * s.out_width);
  for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < total;
       o += (long long)blockDim.x * gridDim.x) {
    const Window win = window_of(o, s);
    const T* xp = x + win.plane * s.height * s.width;
    int best_index = win.h_begin * s.width + win.w_begin;
    float best = to_float(xp[best_index]);
    for (int h = win.h_begin; h < win.h_end; ++h) {
      for (int w = win.w_begin; w < win.w_end; ++w) {
        const int index = h * s.width + w;
        const float v = to_float(xp[index]);
        // Strictly greater: ties keep the first maximum. A NaN replaces a number, not a NaN.
        if (v > best || (isnan(v) && !isnan(best))) {
          best = v;
          best_index = index;
        }
      }
    }
    y[o] = xp[best_index];                 // the element itself: exact in either storage
    argmax[o] = best_index;
  }
}

template <class T>
__device__ __forceinline__ void max_pool2d_backward_body(const T* __restrict__ dy,
                                                         const int* __restrict__ argmax,
                                                         T* __restrict__ dx, int planes,
                                                         const PoolShape& s) {
  const int out_plane = s.out_height * s.out_width;
  const long long total = (long long)planes * (s.height * s.width);
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const Covering cov = covering_of(i, s);
    const T* dyp = dy + cov.plane * out_plane;
    const int* argp = argmax + cov.plane * out_plane;
    float acc = 0.0f;
    for (int oh = cov.oh_begin; oh < cov.oh_end; ++oh)
      for (int ow = cov.ow_begin; ow < cov.ow_end; ++ow)
        if (argp[oh * s.out_width + ow] == cov.r) acc += to_float(dyp[oh * s.out_width + ow]);
    dx[i] = from_float<T>(acc);
  }
}

template <class T>
__device__ __forceinline__ void avg_pool2d_forward_body(const T* __restrict__ x, T* __restrict__ y,
                                                        int planes, const PoolShape& s) {
  const float window_size = (float)(s.kernel_h * s.kernel_w);  // padding counted
  const long long total = (long long)planes * (s.out_height * s.out_width);
  for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < total;
       o += (long long)blockDim.x * gridDim.x) {
    const Window win = window_of(o, s);
    const T* xp = x + win.plane * s.height * s.width;
    float acc = 0.0f;                                  // padded elements add zero: skipped
    for (int h = win.h_begin; h < win.h_end; ++h)
      for (int w = win.w_begin; w < win.w_end; ++w) acc += to_float(xp[h * s.width + w]);
    y[o] = from_float<T>(acc / window_size);
  }
}

template <class T>
__device__ __forceinline__ void avg_pool2d_backward_body(const T* __restrict__ dy,
                                                         T* __restrict__ dx, int planes,
                                                         const PoolShape& s) {
  const int out_plane = s.out_height * s.out_width;
  const float window_size = (float)(s.kernel_h * s.kernel_w);
  const long long total = (long long)planes * (s.height * s.width);
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const Covering cov = covering_of(i, s);
    const T* dyp = dy + cov.plane * out_plane;
    float acc = 0.0f;
    for (int oh = cov.oh_begin; oh < cov.oh_end; ++oh)
      for (int ow = cov.ow_begin; ow < cov.ow_end; ++ow)
        acc += to_float(dyp[oh * s.out_width + ow]);
    dx[i] = from_float<T>(acc / window_size);
  }
}

// Grid: ceil(planes / GLOBAL_POOL_PLANES_PER_BLOCK) blocks of POOL_THREADS.
template <class T>
__device__ __forceinline__ void global_avg_pool2d_forward_body(const T* __restrict__ x,
                                                               T* __restrict__ y, int planes,
                                                               int plane_size) {
  const int lane = threadIdx.x % WARP_SIZE;
  const long long plane = (long long)blockIdx.x * GLOBAL_POOL_PLANES_PER_BLOCK
                          + threadIdx.x / WARP_SIZE;
  if (plane >= planes) return;          // the whole warp leaves together: warp_sum stays full
  const T* xp = x + plane * plane_size;
  float acc = 0.0f;
  for (int e = lane; e < plane_size; e += WARP_SIZE) acc += to_float(xp[e]);
  acc = warp_sum(acc);
  if (lane == 0) y[plane] = from_float<T>(acc / (float)plane_size);
}

template <class T>
__device__ __forceinline__ void global_avg_pool2d_backward_body(const T* __restrict__ dy,
                                                                T* __restrict__ dx, int planes,
                                                                int plane_size) {
  const long long total = (long long)planes * plane_size;
  const float size = (float)plane_size;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x)
    dx[i] = from_float<T>(to_float(dy[i / plane_size]) / size);
}

// ------------------------------------------------------------- entry points: float, then bf16
// (written out: the emulator and the coverage table find kernels by their declarations)

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
max_pool2d_forward(const float* __restrict__ x, float* __restrict__ y, int* __restrict__ argmax,
    int planes, int height, int width, int out_height, int out_width, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  max_pool2d_forward_body(x, y, argmax, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
max_pool2d_backward(const float* __restrict__ dy, const int* __restrict__ argmax,
    float* __restrict__ dx, int planes, int height, int width, int out_height, int out_width,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  max_pool2d_backward_body(dy, argmax, dx, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
avg_pool2d_forward(const float* __restrict__ x, float* __restrict__ y, int planes,
    int height, int width, int out_height, int out_width, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  avg_pool2d_forward_body(x, y, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
avg_pool2d_backward(const float* __restrict__ dy, float* __restrict__ dx, int planes,
    int height, int width, int out_height, int out_width, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  avg_pool2d_backward_body(dy, dx, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
global_avg_pool2d_forward(const float* __restrict__ x, float* __restrict__ y, int planes,
                          int plane_size) {
  global_avg_pool2d_forward_body(x, y, planes, plane_size);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
global_avg_pool2d_backward(const float* __restrict__ dy, float* __restrict__ dx, int planes,
                           int plane_size) {
  global_avg_pool2d_backward_body(dy, dx, planes, plane_size);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
max_pool2d_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, int* __restrict__ argmax,
    int planes, int height, int width, int out_height, int out_width, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  max_pool2d_forward_body(x, y, argmax, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
max_pool2d_backward_bf16(const bf16* __restrict__ dy, const int* __restrict__ argmax,
    bf16* __restrict__ dx, int planes, int height, int width, int out_height, int out_width,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  max_pool2d_backward_body(dy, argmax, dx, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
avg_pool2d_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, int planes,
    int height, int width, int out_height, int out_width, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  avg_pool2d_forward_body(x, y, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
avg_pool2d_backward_bf16(const bf16* __restrict__ dy, bf16* __restrict__ dx, int planes,
    int height, int width, int out_height, int out_width, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w) {
  const PoolShape s{height, width, out_height, out_width, kernel_h, kernel_w,
                    stride_h, stride_w, pad_h, pad_w};
  avg_pool2d_backward_body(dy, dx, planes, s);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
global_avg_pool2d_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, int planes,
                          int plane_size) {
  global_avg_pool2d_forward_body(x, y, planes, plane_size);
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
global_avg_pool2d_backward_bf16(const bf16* __restrict__ dy, bf16* __restrict__ dx, int planes,
                           int plane_size) {
  global_avg_pool2d_backward_body(dy, dx, planes, plane_size);
}
