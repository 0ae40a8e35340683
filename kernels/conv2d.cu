// conv2d.cu -- 2-D convolution (PyTorch's nn.Conv2d without dilation or groups): the forward pass
// with the bias fused in, the gradient of the input and the gradient of the weight.
//
// x [N, C_in, H, W], weight [C_out, C_in, kh, kw], y [N, C_out, H_out, W_out], all NCHW floats;
// stride (sh, sw), padding (ph, pw); H_out = (H + 2 ph - kh) / sh + 1, likewise W_out.
//
//   conv2d_forward:         y[n,o,i,j]  = bias[o] + sum_{c,r,s} w[o,c,r,s] win[n,c,i,j,r,s]
//   conv2d_backward_input:  dx[n,c,h,v] = sum_{o,r,s} w[o,c,r,s] dy[n,o,i,j]  over the (i, j)
//                                         with i sh - ph + r = h and j sw - pw + s = v
//   conv2d_backward_weight: dw[o,c,r,s] = sum_{n,i,j} dy[n,o,i,j] win[n,c,i,j,r,s]
//   conv2d_backward_weight_reduce: dw = the fixed-order sum of the weight kernel's partials
// where win[n,c,i,j,r,s] = x[n, c, i sh - ph + r, j sw - pw + s], 0 outside the image (the zero
// padding). The bias gradient is ops.reduce.channel_sum of dy.
//
// Algorithm: implicit GEMM. Each of the three products is a matrix product whose one operand
// would be the im2col matrix (one column per output pixel, one row per (c, r, s) tap, C_in kh kw
// x N H_out W_out floats). Instead of writing that matrix to memory, each kernel gathers its
// tiles straight from x (or dy) into shared memory, then runs the register-tiled product of
// kernels/gemm.cu: a block of 256 threads owns a 64 x 64 tile of the result, walks the reduction
// in steps of 16, stages a 64 x 16 tile of each operand in shared memory, and every thread
// accumulates a 4 x 4 micro-tile in registers (8 shared reads per 16 fused multiply-adds).
//
//   product          M        N                    K (reduced)          A            B (gathered)
//   forward          C_out    N H_out W_out        C_in kh kw           weight       im2col(x)
//   input gradient   C_in     N H W (one phase)    C_out taps(phase)    weight^T     im2col^T(dy)
//   weight gradient  C_out    C_in kh kw           N H_out W_out        dy           im2col(x)^T
//
// Why implicit GEMM: explicit im2col would cost kh kw times the input in memory and traffic (for
// ResNet-18's 64->64 3x3 layer at 32x32, batch 128: 576 x 131072 floats = 302 MB written and
// read back, against 34 MB of x), while the gathered tile is read once from global memory and
// reused 64 times from shared memory, as in a plain GEMM. A direct (sliding-window) kernel would
// reuse x only across the kh kw taps of one output, not across the 64 output channels of a tile.
// Cost on an H100 SXM (arithmetic, not measured): that layer's forward is 2 M N K = 9.7 GFLOP
// against about 67 MB of compulsory traffic (x and y; w is 0.15 MB), 144 FLOP per byte, seven
// times the FP32 ridge point (67 TFLOP/s / 3.35 TB/s = 20 FLOP/B): the kernels are compute-bound,
// at best 0.14 ms at FP32 peak, and their speed is that of the register tile. With 64 x 64 tiles
// that forward is 2048 blocks, many waves over 132 SMs. cuDNN, which PyTorch lets use TF32
// tensor cores by default, has several times more throughput available; these kernels stay in
// plain FP32 so that the emulator runs them unchanged.
//
// Index arithmetic: each thread loads the same tile column (forward: one output pixel) at every
// step, so it decodes that pixel once; the rows it loads move by 16 per step, so their (c, r, s)
// decomposition is advanced by a precomputed mixed-radix step with carries (Coord3 below)
// instead of two integer divisions per element per step.
//
// Input gradient by stride phase: an input row h meets only the kernel rows r with
// r = h + pad_h (mod stride_h). The kernel groups the input pixels by that residue in h and w
// (blockIdx.z: stride_h stride_w phases) and reduces each group only over its own taps, so for
// stride 2 it skips the three quarters of the transposed gather that would multiply zeros. For
// stride 1 there is one phase and it is the plain transposed gather. No scatter, no atomics:
// every dx element is written once by the thread that owns it.
//
// Weight gradient split along its reduction: K = N H_out W_out is long (131072 for batch 128 at
// 32x32) while M x N can be a single tile (3->64 first layer: 64 x 27), so the reduction is cut
// into `splits` contiguous chunks (blockIdx.z); each block writes its partial tile to its own slice
// of a workspace, and conv2d_backward_weight_reduce adds the slices in split order. The split count
// comes from the shapes alone (ops/conv2d.py), so results are bitwise reproducible, and no float
// atomics are used. The workspace is splits x C_out x C_in kh kw floats, under 17 MB (the split
// count keeps splits x tiles below 2 x 528 tiles of 16 KB).
//
// Every element offset into x, y, dx, dy is computed in long long; the GEMM sizes (at most
// N H_out W_out, N H W, C_in kh kw) are checked by the wrapper to fit an int.
#include "common.cuh"

#define CONV_TILE_M 64                                    // rows of the result per block
#define CONV_TILE_N 64                                    // columns of the result per block
#define CONV_TILE_K 16                                    // reduction step
#define CONV_THREADS 256                                  // 16 x 16 threads
#define CONV_MICRO 4                                      // each thread: 4 x 4 results
#define CONV_THREADS_X (CONV_TILE_N / CONV_MICRO)         // 16
#define CONV_LOADS (CONV_TILE_M * CONV_TILE_K / CONV_THREADS)   // 4 elements of each operand
#define CONV_ROWS_PER_PASS (CONV_THREADS / CONV_TILE_N)   // 4 rows of a B tile per thread pass
#define CONV_REDUCE_THREADS 256                           // block of the split reduction

// ------------------------------------------------------------------------------ index helpers

// An index split into three coordinates: index = (outer * middle_size + middle) * inner_size +
// inner, with middle < middle_size and inner < inner_size (outer unbounded). Used for (c, r, s)
// taps and (image, row, column) pixels.
struct Coord3 {
  int outer, middle, inner;
};

__device__ __forceinline__ Coord3 coord3_of(int index, int middle_size, int inner_size) {
  Coord3 c;
  c.inner = index % inner_size;
  index /= inner_size;
  c.middle = index % middle_size;
  c.outer = index / middle_size;
  return c;
}

// c += step, both in coordinates: since each coordinate of `step` is below its radix, one carry
// per coordinate suffices.
__device__ __forceinline__ void coord3_advance(Coord3& c, const Coord3& step, int middle_size,
                                               int inner_size) {
  c.inner += step.inner;
  if (c.inner >= inner_size) { c.inner -= inner_size; ++c.middle; }
  c.middle += step.middle;
  if (c.middle >= middle_size) { c.middle -= middle_size; ++c.outer; }
  c.outer += step.outer;
}

// ------------------------------------------------------------------------ the register tile

// acc += As^T Bs over one CONV_TILE_K step: thread (tx, ty) owns rows ty + 16 i and columns
// tx + 16 j of the block's tile (as in gemm.cu: shared reads are broadcasts or distinct banks).
__device__ __forceinline__ void accumulate_tile(const float (*As)[CONV_TILE_M + 1],
                                                const float (*Bs)[CONV_TILE_N + 1],
                                                float (&acc)[CONV_MICRO][CONV_MICRO], int tx,
                                                int ty) {
#pragma unroll
  for (int k = 0; k < CONV_TILE_K; ++k) {
    float a[CONV_MICRO], b[CONV_MICRO];
#pragma unroll
    for (int i = 0; i < CONV_MICRO; ++i) a[i] = As[k][ty + i * (CONV_TILE_M / CONV_MICRO)];
#pragma unroll
    for (int j = 0; j < CONV_MICRO; ++j) b[j] = Bs[k][tx + j * CONV_THREADS_X];
#pragma unroll
    for (int i = 0; i < CONV_MICRO; ++i)
#pragma unroll
      for (int j = 0; j < CONV_MICRO; ++j) acc[i][j] += a[i] * b[j];
  }
}

__device__ __forceinline__ void zero_tile(float (&acc)[CONV_MICRO][CONV_MICRO]) {
#pragma unroll
  for (int i = 0; i < CONV_MICRO; ++i)
#pragma unroll
    for (int j = 0; j < CONV_MICRO; ++j) acc[i][j] = 0.0f;
}

// ------------------------------------------------------------------------------------ forward

// y = weight [C_out x C_in kh kw] @ im2col(x) [C_in kh kw x N H_out W_out] + bias (per row).
// Grid: (ceil(N H_out W_out / 64), ceil(C_out / 64)); block: CONV_THREADS. bias may be NULL.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv2d_forward(const float* __restrict__ x, const float* __restrict__ weight,
               const float* __restrict__ bias, float* __restrict__ y, int batch,
               int in_channels, int height, int width, int out_channels, int kernel_h,
               int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int out_height,
               int out_width) {
  __shared__ float As[CONV_TILE_K][CONV_TILE_M + 1];
  __shared__ float Bs[CONV_TILE_K][CONV_TILE_N + 1];
  const int out_pixels = out_height * out_width;
  const int M = out_channels, N = batch * out_pixels, K = in_channels * kernel_h * kernel_w;
  const int tid = threadIdx.x;
  const int tx = tid % CONV_THREADS_X, ty = tid / CONV_THREADS_X;
  const int m0 = blockIdx.y * CONV_TILE_M, n0 = blockIdx.x * CONV_TILE_N;

  // A (weight, row-major M x K): this thread loads column a_k of rows a_m + 16 i, reading
  // 16 consecutive floats of a row per 16 threads.
  const int a_k = tid % CONV_TILE_K, a_m = tid / CONV_TILE_K;
  // B (im2col): this thread loads column b_n, one output pixel, at rows b_k + 4 i. Consecutive
  // threads take consecutive pixels, so for stride 1 they read consecutive floats of x.
  const int b_n = tid % CONV_TILE_N, b_k = tid / CONV_TILE_N;
  const int pixel = n0 + b_n;
  const bool pixel_valid = pixel < N;
  int image = 0, top = 0, left = 0;           // the window's top-left corner in unpadded x
  if (pixel_valid) {
    image = pixel / out_pixels;
    const int q = pixel - image * out_pixels;
    const int oh = q / out_width, ow = q - oh * out_width;
    top = oh * stride_h - pad_h;
    left = ow * stride_w - pad_w;
  }
  const float* x_image = x + (long long)image * in_channels * height * width;
  Coord3 tap[CONV_LOADS];                     // (c, r, s) of rows b_k + 4 i of this step
#pragma unroll
  for (int i = 0; i < CONV_LOADS; ++i)
    tap[i] = coord3_of(b_k + i * CONV_ROWS_PER_PASS, kernel_h, kernel_w);
  const Coord3 tap_step = coord3_of(CONV_TILE_K, kernel_h, kernel_w);

  float acc[CONV_MICRO][CONV_MICRO];
  zero_tile(acc);
  for (int k0 = 0; k0 < K; k0 += CONV_TILE_K) {
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i) {
      const int m = a_m + i * (CONV_THREADS / CONV_TILE_K), gm = m0 + m, gk = k0 + a_k;
      As[a_k][m] = (gm < M && gk < K) ? weight[(long long)gm * K + gk] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i) {
      const int k = b_k + i * CONV_ROWS_PER_PASS;
      const int h = top + tap[i].middle, w = left + tap[i].inner;
      float v = 0.0f;                         // outside the image: the zero padding
      if (pixel_valid && k0 + k < K && h >= 0 && h < height && w >= 0 && w < width)
        v = x_image[((long long)tap[i].outer * height + h) * width + w];
      Bs[k][b_n] = v;
      coord3_advance(tap[i], tap_step, kernel_h, kernel_w);
    }
    __syncthreads();
    accumulate_tile(As, Bs, acc, tx, ty);
    __syncthreads();                          // the next step overwrites the tiles
  }

  // Epilogue: column p of the result is output pixel p, i.e. y[image, o, q] with NCHW strides.
#pragma unroll
  for (int j = 0; j < CONV_MICRO; ++j) {
    const int p = n0 + tx + j * CONV_THREADS_X;
    if (p >= N) continue;
    const int img = p / out_pixels, q = p - img * out_pixels;
#pragma unroll
    for (int i = 0; i < CONV_MICRO; ++i) {
      const int o = m0 + ty + i * (CONV_TILE_M / CONV_MICRO);
      if (o >= M) continue;
      y[((long long)img * M + o) * out_pixels + q] = acc[i][j] + (bias != NULL ? bias[o] : 0.0f);
    }
  }
}

// ----------------------------------------------------------------------------- input gradient

// dx = weight^T [C_in x C_out kh kw] @ im2col^T(dy), one stride phase per blockIdx.z.
// Phase (phase_h, phase_w) holds the input pixels with (h + pad_h) % stride_h == phase_h (and
// likewise in w); they meet the taps r = phase_h + stride_h rr (rr < taps_h), s likewise, and for
// such a tap the output row is exact: i = (h + pad_h - r) / stride_h = base_i - rr.
// Grid: (ceil(N ceil(H / stride_h) ceil(W / stride_w) / 64), ceil(C_in / 64), stride_h stride_w).
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv2d_backward_input(const float* __restrict__ dy, const float* __restrict__ weight,
                      float* __restrict__ dx, int batch, int in_channels, int height, int width,
                      int out_channels, int kernel_h, int kernel_w, int stride_h, int stride_w,
                      int pad_h, int pad_w, int out_height, int out_width) {
  __shared__ float As[CONV_TILE_K][CONV_TILE_M + 1];
  __shared__ float Bs[CONV_TILE_K][CONV_TILE_N + 1];
  const int phase_h = blockIdx.z / stride_w, phase_w = blockIdx.z % stride_w;
  const int taps_h = phase_h < kernel_h ? (kernel_h - 1 - phase_h) / stride_h + 1 : 0;
  const int taps_w = phase_w < kernel_w ? (kernel_w - 1 - phase_w) / stride_w + 1 : 0;
  // The first input row (column) of the phase, and how many rows (columns) it has.
  const int first_h = ((phase_h - pad_h) % stride_h + stride_h) % stride_h;
  const int first_w = ((phase_w - pad_w) % stride_w + stride_w) % stride_w;
  const int rows = first_h < height ? (height - 1 - first_h) / stride_h + 1 : 0;
  const int cols = first_w < width ? (width - 1 - first_w) / stride_w + 1 : 0;
  const int M = in_channels, N = batch * rows * cols, K = out_channels * taps_h * taps_w;
  const int m0 = blockIdx.y * CONV_TILE_M, n0 = blockIdx.x * CONV_TILE_N;
  if (n0 >= N) return;                        // the grid is sized for the largest phase
  const int tid = threadIdx.x;
  const int tx = tid % CONV_THREADS_X, ty = tid / CONV_THREADS_X;
  const int out_pixels = out_height * out_width;
  const int taps = kernel_h * kernel_w;

  // A[c][k], k = (o, rr, ss): weight[o, c, phase_h + stride_h rr, phase_w + stride_w ss]. This
  // thread loads column a_k (one tap, decoded once per step) of rows a_m + 16 i.
  const int a_k = tid % CONV_TILE_K, a_m = tid / CONV_TILE_K;
  // B[k][p] = dy[image, o, base_i - rr, base_j - ss] for input pixel p of the phase. This thread
  // loads column b_n (one input pixel) at rows b_k + 4 i.
  const int b_n = tid % CONV_TILE_N, b_k = tid / CONV_TILE_N;
  const int pixel = n0 + b_n;
  const bool pixel_valid = pixel < N;
  int base_i = 0, base_j = 0;
  const float* dy_image = dy;
  if (pixel_valid) {
    const Coord3 p = coord3_of(pixel, rows, cols);
    base_i = (first_h + p.middle * stride_h + pad_h - phase_h) / stride_h;   // exact
    base_j = (first_w + p.inner * stride_w + pad_w - phase_w) / stride_w;
    dy_image = dy + (long long)p.outer * out_channels * out_pixels;
  }

  float acc[CONV_MICRO][CONV_MICRO];
  zero_tile(acc);
  if (K > 0) {                // a phase no tap reaches (taps_h or taps_w 0) has dx = 0
    Coord3 a_tap = coord3_of(a_k, taps_h, taps_w);
    Coord3 b_tap[CONV_LOADS];
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i)
      b_tap[i] = coord3_of(b_k + i * CONV_ROWS_PER_PASS, taps_h, taps_w);
    const Coord3 tap_step = coord3_of(CONV_TILE_K, taps_h, taps_w);
    for (int k0 = 0; k0 < K; k0 += CONV_TILE_K) {
      const bool a_valid = k0 + a_k < K;
      const long long a_offset = (long long)a_tap.outer * in_channels * taps +
                                 (phase_h + a_tap.middle * stride_h) * kernel_w + phase_w +
                                 a_tap.inner * stride_w;
#pragma unroll
      for (int i = 0; i < CONV_LOADS; ++i) {
        const int m = a_m + i * (CONV_THREADS / CONV_TILE_K), c = m0 + m;
        As[a_k][m] = (a_valid && c < M) ? weight[a_offset + (long long)c * taps] : 0.0f;
      }
      coord3_advance(a_tap, tap_step, taps_h, taps_w);
#pragma unroll
      for (int i = 0; i < CONV_LOADS; ++i) {
        const int k = b_k + i * CONV_ROWS_PER_PASS;
        const int oi = base_i - b_tap[i].middle, oj = base_j - b_tap[i].inner;
        float v = 0.0f;                       // no output window there
        if (pixel_valid && k0 + k < K && oi >= 0 && oi < out_height && oj >= 0 && oj < out_width)
          v = dy_image[((long long)b_tap[i].outer * out_height + oi) * out_width + oj];
        Bs[k][b_n] = v;
        coord3_advance(b_tap[i], tap_step, taps_h, taps_w);
      }
      __syncthreads();
      accumulate_tile(As, Bs, acc, tx, ty);
      __syncthreads();
    }
  }

#pragma unroll
  for (int j = 0; j < CONV_MICRO; ++j) {
    const int p = n0 + tx + j * CONV_THREADS_X;
    if (p >= N) continue;
    const Coord3 q = coord3_of(p, rows, cols);
    const int h = first_h + q.middle * stride_h, w = first_w + q.inner * stride_w;
#pragma unroll
    for (int i = 0; i < CONV_MICRO; ++i) {
      const int c = m0 + ty + i * (CONV_TILE_M / CONV_MICRO);
      if (c >= M) continue;
      dx[(((long long)q.outer * M + c) * height + h) * width + w] = acc[i][j];
    }
  }
}

// ---------------------------------------------------------------------------- weight gradient

// Partial dw over one chunk of the reduction: dw_partial[split] = dy [C_out x L] @ im2col(x)^T
// [L x C_in kh kw] restricted to l in [split * split_len, (split + 1) * split_len), where
// l = (image, i, j) runs over the N H_out W_out output pixels. split_len is a multiple of 16.
// Grid: (ceil(C_in kh kw / 64), ceil(C_out / 64), splits); block: CONV_THREADS.
// dw_partial is [splits, C_out, C_in kh kw]; with one split it is dw itself.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv2d_backward_weight(const float* __restrict__ dy, const float* __restrict__ x,
                       float* __restrict__ dw_partial, int batch, int in_channels, int height,
                       int width, int out_channels, int kernel_h, int kernel_w, int stride_h,
                       int stride_w, int pad_h, int pad_w, int out_height, int out_width,
                       int split_len) {
  __shared__ float As[CONV_TILE_K][CONV_TILE_M + 1];
  __shared__ float Bs[CONV_TILE_K][CONV_TILE_N + 1];
  const int out_pixels = out_height * out_width;
  const int M = out_channels, N = in_channels * kernel_h * kernel_w, L = batch * out_pixels;
  const int l_begin = blockIdx.z * split_len;
  const int l_end = min(L, l_begin + split_len);
  const int tid = threadIdx.x;
  const int tx = tid % CONV_THREADS_X, ty = tid / CONV_THREADS_X;
  const int m0 = blockIdx.y * CONV_TILE_M, n0 = blockIdx.x * CONV_TILE_N;
  const long long image_stride_x = (long long)in_channels * height * width;
  const long long image_stride_dy = (long long)out_channels * out_pixels;

  // Both operands are read along l (consecutive output pixels: consecutive floats of dy and,
  // for stride 1, of x): this thread loads reduction row l_local = tid % 16 of A's rows
  // (output channels) and B's columns (taps) tid / 16 + 16 i.
  const int l_local = tid % CONV_TILE_K, col = tid / CONV_TILE_K;
  // B's columns are fixed for the whole loop: decode their taps once.
  Coord3 tap[CONV_LOADS];
  bool tap_valid[CONV_LOADS];
#pragma unroll
  for (int i = 0; i < CONV_LOADS; ++i) {
    const int n = n0 + col + i * (CONV_THREADS / CONV_TILE_K);
    tap_valid[i] = n < N;
    tap[i] = coord3_of(tap_valid[i] ? n : 0, kernel_h, kernel_w);
  }
  // The output pixel (image, i, j) of row l_begin + l_local, advanced by 16 per step.
  Coord3 pos = coord3_of(l_begin + l_local, out_height, out_width);
  const Coord3 pos_step = coord3_of(CONV_TILE_K, out_height, out_width);

  float acc[CONV_MICRO][CONV_MICRO];
  zero_tile(acc);
  for (int l0 = l_begin; l0 < l_end; l0 += CONV_TILE_K) {
    const bool l_valid = l0 + l_local < l_end;
    const float* dy_pixel = dy + pos.outer * image_stride_dy + pos.middle * out_width + pos.inner;
    const float* x_image = x + pos.outer * image_stride_x;
    const int top = pos.middle * stride_h - pad_h, left = pos.inner * stride_w - pad_w;
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i) {
      const int m = col + i * (CONV_THREADS / CONV_TILE_K), o = m0 + m;
      As[l_local][m] = (l_valid && o < M) ? dy_pixel[(long long)o * out_pixels] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i) {
      const int n = col + i * (CONV_THREADS / CONV_TILE_K);
      const int h = top + tap[i].middle, w = left + tap[i].inner;
      float v = 0.0f;                         // the zero padding
      if (l_valid && tap_valid[i] && h >= 0 && h < height && w >= 0 && w < width)
        v = x_image[((long long)tap[i].outer * height + h) * width + w];
      Bs[l_local][n] = v;
    }
    coord3_advance(pos, pos_step, out_height, out_width);
    __syncthreads();
    accumulate_tile(As, Bs, acc, tx, ty);
    __syncthreads();
  }

  float* out = dw_partial + (long long)blockIdx.z * M * N;
#pragma unroll
  for (int i = 0; i < CONV_MICRO; ++i) {
    const int o = m0 + ty + i * (CONV_TILE_M / CONV_MICRO);
    if (o >= M) continue;
#pragma unroll
    for (int j = 0; j < CONV_MICRO; ++j) {
      const int n = n0 + tx + j * CONV_THREADS_X;
      if (n < N) out[(long long)o * N + n] = acc[i][j];
    }
  }
}

// dw[e] = sum over split = 0 .. splits-1, in that order, of dw_partial[split][e]; count = C_out
// C_in kh kw. One thread per element, consecutive threads on consecutive elements (coalesced
// reads of every slice); a grid-stride loop covers any count.
extern "C" __global__ void conv2d_backward_weight_reduce(const float* __restrict__ dw_partial,
                                                         float* __restrict__ dw, int splits,
                                                         int count) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < count; e += gridDim.x * blockDim.x) {
    float sum = 0.0f;
    for (int split = 0; split < splits; ++split) sum += dw_partial[(long long)split * count + e];
    dw[e] = sum;
  }
}
