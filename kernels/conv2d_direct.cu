// conv2d_direct.cu -- the definition of the convolution in CUDA, one thread per output element
// (step 1 of the progression: conv2d_direct.cu, conv2d.cu's tiled implicit GEMM in FP32 SIMT,
// conv2d_tc.cu on tensor cores). Same arguments, shapes and formulas as conv2d.cu's header; each
// thread walks the whole sum of its element, reading every operand from global memory.
// Grid: ceil(elements / 256) blocks of 256 threads (a grid-stride loop covers any count).
#include "common.cuh"

extern "C" __global__ void conv2d_direct_forward(
    const float* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
    const float* __restrict__ residual, int relu, float* __restrict__ y, int batch,
    int in_channels, int height, int width, int out_channels,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int out_height,
    int out_width) {
  const long long count = (long long)batch * out_channels * out_height * out_width;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < count;
       e += (long long)gridDim.x * blockDim.x) {          // e = ((n o) i) j
    const int j = e % out_width, i = (e / out_width) % out_height;
    const int o = (e / ((long long)out_width * out_height)) % out_channels;
    const long long n = e / ((long long)out_width * out_height * out_channels);
    float sum = bias != NULL ? bias[o] : 0.0f;
    for (int c = 0; c < in_channels; ++c)
      for (int r = 0; r < kernel_h; ++r)
        for (int s = 0; s < kernel_w; ++s) {
          const int h = i * stride_h - pad_h + r, w = j * stride_w - pad_w + s;
          if (h >= 0 && h < height && w >= 0 && w < width)
            sum += weight[((o * in_channels + c) * kernel_h + r) * kernel_w + s] *
                   x[((n * in_channels + c) * height + h) * width + w];
        }
    y[e] = conv_epilogue(sum, NULL, residual, relu, o, e);      // the bias is in the sum
  }
}

// dx[n,c,h,v] = sum over o, r, s with (h + pad_h - r) = i stride_h, (v + pad_w - s) = j stride_w
// (i, j inside the output) of w[o,c,r,s] dy[n,o,i,j].
extern "C" __global__ void conv2d_direct_backward_input(
    const float* __restrict__ dy, const float* __restrict__ weight, float* __restrict__ dx,
    int batch, int in_channels, int height, int width, int out_channels, int kernel_h,
    int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int out_height,
    int out_width) {
  const long long count = (long long)batch * in_channels * height * width;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < count;
       e += (long long)gridDim.x * blockDim.x) {
    const int v = e % width, h = (e / width) % height;
    const int c = (e / ((long long)width * height)) % in_channels;
    const long long n = e / ((long long)width * height * in_channels);
    float sum = 0.0f;
    for (int o = 0; o < out_channels; ++o)
      for (int r = 0; r < kernel_h; ++r)
        for (int s = 0; s < kernel_w; ++s) {
          const int ti = h + pad_h - r, tj = v + pad_w - s;
          if (ti < 0 || tj < 0 || ti % stride_h || tj % stride_w) continue;
          const int i = ti / stride_h, j = tj / stride_w;
          if (i < out_height && j < out_width)
            sum += weight[((o * in_channels + c) * kernel_h + r) * kernel_w + s] *
                   dy[((n * out_channels + o) * out_height + i) * out_width + j];
        }
    dx[e] = sum;
  }
}

// dw[o,c,r,s] = sum over n, i, j of dy[n,o,i,j] x[n, c, i stride_h - pad_h + r, j stride_w - pad_w + s].
extern "C" __global__ void conv2d_direct_backward_weight(
    const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dw, int batch,
    int in_channels, int height, int width, int out_channels, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w, int out_height, int out_width) {
  const int count = out_channels * in_channels * kernel_h * kernel_w;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < count; e += gridDim.x * blockDim.x) {
    const int s = e % kernel_w, r = (e / kernel_w) % kernel_h;
    const int c = (e / (kernel_w * kernel_h)) % in_channels;
    const int o = e / (kernel_w * kernel_h * in_channels);
    float sum = 0.0f;
    for (long long n = 0; n < batch; ++n)
      for (int i = 0; i < out_height; ++i)
        for (int j = 0; j < out_width; ++j) {
          const int h = i * stride_h - pad_h + r, w = j * stride_w - pad_w + s;
          if (h >= 0 && h < height && w >= 0 && w < width)
            sum += dy[((n * out_channels + o) * out_height + i) * out_width + j] *
                   x[((n * in_channels + c) * height + h) * width + w];
        }
    dw[e] = sum;
  }
}
