// conv2d.cu -- 2-D convolution as three implicit GEMMs: the forward pass (bias and epilogue
// fused), the gradient of the input, the gradient of the weight (and the fixed-order sum of its
// partial slices). The bias gradient is ops.reduce.channel_sum(dy).
//
// The sums, and H_out, W_out, are specified in cupycnn/reference/conv2d.py: read it first.
// Here: x [N, C_in, H, W], weight [C_out, C_in, kh, kw], y [N, C_out, H_out, W_out], NCHW
// float32; stride (sh, sw), padding (ph, pw).
//
// Each sum is an M x P matrix product reduced over K (P, not N: N is the batch), with the
// im2col matrix as one operand: a row per tap (c, r, s), a column per output pixel (n, i, j),
// the entry x[n, c, i sh - ph + r, j sw - pw + s] (0 in the padding):
//
//   product          M       P                       K                         A          B
//   forward          C_out   N H_out W_out           C_in kh kw                weight     im2col(x)
//   input gradient   C_in    N H W / (sh sw)         C_out kh kw / (sh sw)     weight^T   im2col^T(dy)
//   weight gradient  C_out   C_in kh kw              N H_out W_out             dy         im2col(x)^T
//
// im2col^T(dy) has a row per (o, r, s) and a column per input pixel (n, h, v), the entry
// dy[n, o, i, j] of the output pixel whose tap (r, s) lands on (h, v) (0 where none does); its
// P and K above are per stride phase, rounded (conv2d_backward_input).
//
// How:
// - Implicit GEMM: the im2col matrix is never written. Each block gathers its tile of it straight
//   from x (or dy) into shared memory, the padding being a bounds test, then runs the register
//   tile below: 256 threads per 64 x 64 tile of the result, the reduction in steps of 16, a
//   4 x 4 micro-tile per thread (8 shared reads per 16 multiply-adds): thread (tx, ty) owns rows
//   ty + 16 i and columns tx + 16 j, i, j < 4.
// - Why not explicit im2col: it is kh kw times x (302 MB against 34 MB of x for ResNet-18's
//   64->64 3x3 layer at batch 128), written and read back; a gathered tile is read once and reused
//   64 times from shared memory. A direct sliding-window kernel reuses x only over one output's
//   kh kw taps, not over the 64 output channels of a tile.
// - Index arithmetic: a thread loads the same tile column at every step, so it decodes that column
//   once; its rows move by 16 per step, so their coordinates (Tap, PhaseTap, Pixel, in
//   conv2d_coords.cuh) advance with carries instead of two integer divisions per element.
// - Deterministic: no atomics (each output element written once, by its owner), and the weight
//   gradient's split count depends on the shapes only.
// - Indices: GEMM sizes in int (the wrapper checks they fit), element offsets in long long.
// - FP32 only: tf32 and bf16 run conv2d_tc.cu. Each ResNet-18 layer's floor on an H200 (the
//   roofline) and what it means for this tile: docs/BENCHMARKS.md.
#include "common.cuh"
#include "conv2d_coords.cuh"

// Launch constants: cupycnn/ops/conv2d.py reads these lines, so they are written only here.
#define CONV_TILE_M 64                                    // rows of the result per block
#define CONV_TILE_P 64                                    // columns of the result per block
#define CONV_TILE_K 16                                    // reduction step
#define CONV_THREADS 256                                  // 16 x 16 threads
#define CONV_MICRO 4                                      // each thread: 4 x 4 results
#define CONV_THREADS_X (CONV_TILE_P / CONV_MICRO)         // 16
#define CONV_LOADS (CONV_TILE_M * CONV_TILE_K / CONV_THREADS)   // 4 elements of each operand
#define CONV_ROWS_PER_PASS (CONV_THREADS / CONV_TILE_P)   // 4 rows of a B tile per thread pass
#define CONV_REDUCE_THREADS 256                           // block of the split reduction
#define CONV_FORWARD_MIN_BLOCKS 4                         // resident blocks per SM (forward)

// ------------------------------------------------------------------------ the register tile

// The tiles are stored k-major, As[k][m] and Bs[k][p]: a step reads one row of each. The extra
// column is for the stores that run down a column (16 threads with consecutive k: As in every
// kernel, Bs in the weight gradient's): rows of 65 floats put them in 16 banks, rows of 64 in one.
//
// acc += As^T Bs over one CONV_TILE_K step. With the ownership of the header (rows ty + 16 i,
// columns tx + 16 j), a warp's shared reads are broadcasts or distinct banks.
__device__ __forceinline__ void accumulate_tile(const float (*As)[CONV_TILE_M + 1],
                                                const float (*Bs)[CONV_TILE_P + 1],
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

// ------------------------------------------------------------------- batchnorm statistics

// The forward's epilogue for conv2d_forward_stats (at the end of the file): for row
// o = m0 + ty + 16 i of the tile, this thread's 4 columns, then the row's 16 threads tx (a
// half warp) in a fixed butterfly; thread tx = 0 writes the block's (sum y, sum y^2) to
// stats_partial[o, blockIdx.x] ([C_out, gridDim.x, 2]). The values are y's as stored
// (conv_epilogue without residual or ReLU: acc + bias).
__device__ __forceinline__ void forward_tile_statistics(
    const float (&acc)[CONV_MICRO][CONV_MICRO], const float* __restrict__ bias, int M, int P,
    int m0, int p0, int tx, int ty, double* __restrict__ stats_partial) {
#pragma unroll
  for (int i = 0; i < CONV_MICRO; ++i) {
    const int o = m0 + ty + i * (CONV_TILE_M / CONV_MICRO);
    double sum = 0.0, sum_sq = 0.0;
#pragma unroll
    for (int j = 0; j < CONV_MICRO; ++j) {
      if (o < M && p0 + tx + j * CONV_THREADS_X < P) {
        const double v = conv_epilogue(acc[i][j], bias, (const float*)nullptr, 0, o, 0);
        sum += v;
        sum_sq += v * v;
      }
    }
    sum = group_sum_double<CONV_THREADS_X>(sum);
    sum_sq = group_sum_double<CONV_THREADS_X>(sum_sq);
    if (tx == 0 && o < M) {
      double* slot = stats_partial + ((long long)o * gridDim.x + blockIdx.x) * 2;
      slot[0] = sum;
      slot[1] = sum_sq;
    }
  }
}

// ------------------------------------------------------------------------------------ forward

// y = the header's forward product + bias (per row), then the epilogue (common.cuh's
// conv_epilogue: + residual, ReLU; both optional). bias may be NULL.
// Grid: (ceil(N H_out W_out / 64), ceil(C_out / 64)); block: CONV_THREADS.
// CONV_FORWARD_MIN_BLOCKS: asking for it, ptxas (CUDA 13, sm_90) grants 64 registers, not 63
// and an 8-byte spill; 4 blocks of 256 threads fit an SM either way.
// STATS: also the batchnorm's statistics of y (conv2d_forward_stats, at the end).
template <bool STATS>
__device__ __forceinline__ void conv2d_forward_body(
    const float* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
    const float* __restrict__ residual, int relu, float* __restrict__ y, int batch,
    int in_channels, int height, int width, int out_channels, int kernel_h, int kernel_w,
    int stride_h, int stride_w, int pad_h, int pad_w, int out_height, int out_width,
    double* __restrict__ stats_partial) {
  __shared__ float As[CONV_TILE_K][CONV_TILE_M + 1];
  __shared__ float Bs[CONV_TILE_K][CONV_TILE_P + 1];
  const int out_pixels = out_height * out_width;
  const int M = out_channels, P = batch * out_pixels, K = in_channels * kernel_h * kernel_w;
  const int tid = threadIdx.x;
  const int tx = tid % CONV_THREADS_X, ty = tid / CONV_THREADS_X;
  const int m0 = blockIdx.y * CONV_TILE_M, p0 = blockIdx.x * CONV_TILE_P;

  // Each step the 256 threads fill both tiles, CONV_LOADS = 4 elements each.
  // A (weight, row-major M x K): this thread loads column a_k of rows a_m + 16 i, reading
  // 16 consecutive floats of a row per 16 threads.
  const int a_k = tid % CONV_TILE_K, a_m = tid / CONV_TILE_K;
  // B (im2col): this thread loads column b_p, one output pixel, at rows b_k + 4 i. Consecutive
  // threads take consecutive pixels, so for stride 1 they read consecutive floats of x.
  const int b_p = tid % CONV_TILE_P, b_k = tid / CONV_TILE_P;
  const int pixel = p0 + b_p;
  const bool pixel_valid = pixel < P;
  int image = 0, top = 0, left = 0;           // the window's top-left corner in unpadded x
  if (pixel_valid) {
    image = pixel / out_pixels;
    const int q = pixel - image * out_pixels;
    const int oh = q / out_width, ow = q - oh * out_width;
    top = oh * stride_h - pad_h;
    left = ow * stride_w - pad_w;
  }
  const float* x_image = x + (long long)image * in_channels * height * width;
  Tap tap[CONV_LOADS];                        // the taps of rows b_k + 4 i of this step
#pragma unroll
  for (int i = 0; i < CONV_LOADS; ++i)
    tap[i] = split3<Tap>(b_k + i * CONV_ROWS_PER_PASS, kernel_h, kernel_w);
  const Tap tap_step = split3<Tap>(CONV_TILE_K, kernel_h, kernel_w);

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
      const int h = top + tap[i].r, w = left + tap[i].s;
      float v = 0.0f;                         // outside the image: the zero padding
      if (pixel_valid && k0 + k < K && h >= 0 && h < height && w >= 0 && w < width)
        v = x_image[((long long)tap[i].c * height + h) * width + w];
      Bs[k][b_p] = v;
      advance3(tap[i], tap_step, kernel_h, kernel_w);
    }
    __syncthreads();
    accumulate_tile(As, Bs, acc, tx, ty);
    __syncthreads();                          // the next step overwrites the tiles
  }

  // Epilogue: column p of the result is output pixel p, i.e. y[image, o, q] with NCHW strides.
#pragma unroll
  for (int j = 0; j < CONV_MICRO; ++j) {
    const int p = p0 + tx + j * CONV_THREADS_X;
    if (p >= P) continue;
    const int img = p / out_pixels, q = p - img * out_pixels;
#pragma unroll
    for (int i = 0; i < CONV_MICRO; ++i) {
      const int o = m0 + ty + i * (CONV_TILE_M / CONV_MICRO);
      if (o >= M) continue;
      const long long index = ((long long)img * M + o) * out_pixels + q;
      y[index] = conv_epilogue(acc[i][j], bias, residual, relu, o, index);
    }
  }
  if (STATS) forward_tile_statistics(acc, bias, M, P, m0, p0, tx, ty, stats_partial);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_FORWARD_MIN_BLOCKS)
conv2d_forward(const float* __restrict__ x, const float* __restrict__ weight,
               const float* __restrict__ bias, const float* __restrict__ residual, int relu,
               float* __restrict__ y, int batch,
               int in_channels, int height, int width, int out_channels, int kernel_h,
               int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int out_height,
               int out_width) {
  conv2d_forward_body<false>(x, weight, bias, residual, relu, y, batch, in_channels, height,
                             width, out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                             pad_w, out_height, out_width, nullptr);
}

// ----------------------------------------------------------------------------- input gradient

// dx = the header's input-gradient product, one stride phase per blockIdx.z.
//
// Input row h gets a term from kernel row r only through an output row i with i sh - ph + r = h,
// so only when r = h + ph (mod sh). The input rows fall into sh phases by (h + ph) mod sh, and
// phase phase_h meets only the kernel rows r = phase_h + sh rr, rr = 0, 1, ..; columns likewise.
// Each of the sh sw phases is its own GEMM over its own taps, multiplying no zeros.
//
// Worked example, stride 2, 3x3 kernel, pad 1, rows only:
//   phase 0: h + 1 even, h = 1, 3, 5, ..  meets kernel rows r = 0, 2  (h = 3: from i = 2 and 1)
//   phase 1: h + 1 odd,  h = 0, 2, 4, ..  meets kernel row  r = 1     (h = 2: from i = 1)
// With columns alike, the four phases reduce over 2x2, 2x1, 1x2 and 1x1 taps: each input pixel
// over 9/4 taps on average instead of 9.
//
// A phase's rows, derived (columns likewise; phase_axis in conv2d_coords.cuh computes them),
// each with phase 0 of the example:
//   taps_h  = how many r < kh have r = phase_h (mod sh) = (kh - 1 - phase_h) / sh + 1 (0 when
//             phase_h >= kh); there (3 - 1 - 0) / 2 + 1 = 2.
//   first_h = the smallest h >= 0 with h + ph = phase_h (mod sh), i.e. (phase_h - ph) mod sh,
//             written ((a % sh) + sh) % sh because C's % of a negative a is negative; there 1.
//   rows h  = first_h + sh a for a = 0 .. phase_rows - 1, phase_rows = (H - 1 - first_h) / sh + 1.
//   base_i  = (h + ph - phase_h) / sh, exact since h + ph = phase_h (mod sh). Tap rr (kernel
//             row r = phase_h + sh rr) meets output row i = (h + ph - r) / sh = base_i - rr; an
//             i outside [0, H_out) has no window there and adds nothing. There, h = 3 has
//             base_i = 2: rr = 0 meets i = 2, rr = 1 meets i = 1.
// Grid: (ceil(N ceil(H / sh) ceil(W / sw) / 64), ceil(C_in / 64), sh sw); block: CONV_THREADS.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv2d_backward_input(const float* __restrict__ dy, const float* __restrict__ weight,
                      float* __restrict__ dx, int batch, int in_channels, int height, int width,
                      int out_channels, int kernel_h, int kernel_w, int stride_h, int stride_w,
                      int pad_h, int pad_w, int out_height, int out_width) {
  __shared__ float As[CONV_TILE_K][CONV_TILE_M + 1];
  __shared__ float Bs[CONV_TILE_K][CONV_TILE_P + 1];
  const PhaseAxis rows = phase_axis(blockIdx.z / stride_w, height, kernel_h, stride_h, pad_h);
  const PhaseAxis cols = phase_axis(blockIdx.z % stride_w, width, kernel_w, stride_w, pad_w);
  const int phase_h = rows.phase, taps_h = rows.taps, first_h = rows.first, phase_rows = rows.count;
  const int phase_w = cols.phase, taps_w = cols.taps, first_w = cols.first, phase_cols = cols.count;
  const int M = in_channels, P = batch * phase_rows * phase_cols;
  const int K = out_channels * taps_h * taps_w;
  const int m0 = blockIdx.y * CONV_TILE_M, p0 = blockIdx.x * CONV_TILE_P;
  if (p0 >= P) return;                        // the grid is sized for the largest phase
  const int tid = threadIdx.x;
  const int tx = tid % CONV_THREADS_X, ty = tid / CONV_THREADS_X;
  const int out_pixels = out_height * out_width;
  const int taps = kernel_h * kernel_w;

  // A[c][k], k = (o, rr, ss): weight[o, c, phase_h + stride_h rr, phase_w + stride_w ss]. This
  // thread loads column a_k (one tap, decoded once per step) of rows a_m + 16 i.
  const int a_k = tid % CONV_TILE_K, a_m = tid / CONV_TILE_K;
  // B[k][p] = dy[n, o, base_i - rr, base_j - ss] for input pixel p of the phase. This thread
  // loads column b_p (one input pixel) at rows b_k + 4 i.
  const int b_p = tid % CONV_TILE_P, b_k = tid / CONV_TILE_P;
  const int pixel = p0 + b_p;
  const bool pixel_valid = pixel < P;
  int base_i = 0, base_j = 0;
  const float* dy_image = dy;
  if (pixel_valid) {
    const Pixel p = split3<Pixel>(pixel, phase_rows, phase_cols);
    base_i = (first_h + p.i * stride_h + pad_h - phase_h) / stride_h;   // exact
    base_j = (first_w + p.j * stride_w + pad_w - phase_w) / stride_w;
    dy_image = dy + (long long)p.n * out_channels * out_pixels;
  }

  float acc[CONV_MICRO][CONV_MICRO];
  zero_tile(acc);
  if (K > 0) {                // a phase no tap reaches (taps_h or taps_w 0) has dx = 0
    PhaseTap a_tap = split3<PhaseTap>(a_k, taps_h, taps_w);
    PhaseTap b_tap[CONV_LOADS];
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i)
      b_tap[i] = split3<PhaseTap>(b_k + i * CONV_ROWS_PER_PASS, taps_h, taps_w);
    const PhaseTap tap_step = split3<PhaseTap>(CONV_TILE_K, taps_h, taps_w);
    for (int k0 = 0; k0 < K; k0 += CONV_TILE_K) {
      const bool a_valid = k0 + a_k < K;
      // weight[o, c, r, s] is weight[(o C_in + c) kh kw + r kw + s]: all but the c term, here.
      const long long a_offset = (long long)a_tap.o * in_channels * taps +
                                 (phase_h + a_tap.rr * stride_h) * kernel_w + phase_w +
                                 a_tap.ss * stride_w;
#pragma unroll
      for (int i = 0; i < CONV_LOADS; ++i) {
        const int m = a_m + i * (CONV_THREADS / CONV_TILE_K), c = m0 + m;
        As[a_k][m] = (a_valid && c < M) ? weight[a_offset + (long long)c * taps] : 0.0f;
      }
      advance3(a_tap, tap_step, taps_h, taps_w);
#pragma unroll
      for (int i = 0; i < CONV_LOADS; ++i) {
        const int k = b_k + i * CONV_ROWS_PER_PASS;
        const int oi = base_i - b_tap[i].rr, oj = base_j - b_tap[i].ss;
        float v = 0.0f;                       // no output window there
        if (pixel_valid && k0 + k < K && oi >= 0 && oi < out_height && oj >= 0 && oj < out_width)
          v = dy_image[((long long)b_tap[i].o * out_height + oi) * out_width + oj];
        Bs[k][b_p] = v;
        advance3(b_tap[i], tap_step, taps_h, taps_w);
      }
      __syncthreads();
      accumulate_tile(As, Bs, acc, tx, ty);
      __syncthreads();
    }
  }

#pragma unroll
  for (int j = 0; j < CONV_MICRO; ++j) {
    const int p = p0 + tx + j * CONV_THREADS_X;
    if (p >= P) continue;
    const Pixel q = split3<Pixel>(p, phase_rows, phase_cols);
    const int h = first_h + q.i * stride_h, w = first_w + q.j * stride_w;
#pragma unroll
    for (int i = 0; i < CONV_MICRO; ++i) {
      const int c = m0 + ty + i * (CONV_TILE_M / CONV_MICRO);
      if (c >= M) continue;
      dx[(((long long)q.n * M + c) * height + h) * width + w] = acc[i][j];
    }
  }
}

// ---------------------------------------------------------------------------- weight gradient

// dw_partial[split] = the header's weight-gradient product over one chunk of its K = N H_out W_out
// output pixels: k in [split split_len, (split + 1) split_len).
//
// Why split: K is long (131072 for batch 128 at 32x32) while the result can be a single tile
// (64 x 27 for the 3->64 stem), which alone would occupy one SM. So the reduction is cut into
// chunks (blockIdx.z), each block writes its partial tile into its own slice of dw_partial
// [splits, C_out, C_in kh kw], and conv2d_backward_weight_reduce adds the slices in split order.
// split_len is a multiple of 16 (ops/conv2d.py's weight_grad_splits chooses it); with one split,
// dw_partial is dw itself.
// Grid: (ceil(C_in kh kw / 64), ceil(C_out / 64), splits); block: CONV_THREADS.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv2d_backward_weight(const float* __restrict__ dy, const float* __restrict__ x,
                       float* __restrict__ dw_partial, int batch, int in_channels, int height,
                       int width, int out_channels, int kernel_h, int kernel_w, int stride_h,
                       int stride_w, int pad_h, int pad_w, int out_height, int out_width,
                       int split_len) {
  __shared__ float As[CONV_TILE_K][CONV_TILE_M + 1];
  __shared__ float Bs[CONV_TILE_K][CONV_TILE_P + 1];
  const int out_pixels = out_height * out_width;
  const int M = out_channels, P = in_channels * kernel_h * kernel_w, K = batch * out_pixels;
  const int k_begin = blockIdx.z * split_len;
  const int k_end = min(K, k_begin + split_len);
  const int tid = threadIdx.x;
  const int tx = tid % CONV_THREADS_X, ty = tid / CONV_THREADS_X;
  const int m0 = blockIdx.y * CONV_TILE_M, p0 = blockIdx.x * CONV_TILE_P;
  const long long image_stride_x = (long long)in_channels * height * width;
  const long long image_stride_dy = (long long)out_channels * out_pixels;

  // Both operands are read along k (consecutive output pixels: consecutive floats of dy and,
  // for stride 1, of x): this thread loads reduction row k_local = tid % 16 of A's rows
  // (output channels) and B's columns (taps) tid / 16 + 16 i.
  const int k_local = tid % CONV_TILE_K, col = tid / CONV_TILE_K;
  // B's columns are fixed for the whole loop: decode their taps once.
  Tap tap[CONV_LOADS];
  bool tap_valid[CONV_LOADS];
#pragma unroll
  for (int i = 0; i < CONV_LOADS; ++i) {
    const int p = p0 + col + i * (CONV_THREADS / CONV_TILE_K);
    tap_valid[i] = p < P;
    tap[i] = split3<Tap>(tap_valid[i] ? p : 0, kernel_h, kernel_w);
  }
  // The output pixel of row k_begin + k_local, advanced by 16 per step.
  Pixel pos = split3<Pixel>(k_begin + k_local, out_height, out_width);
  const Pixel pos_step = split3<Pixel>(CONV_TILE_K, out_height, out_width);

  float acc[CONV_MICRO][CONV_MICRO];
  zero_tile(acc);
  for (int k0 = k_begin; k0 < k_end; k0 += CONV_TILE_K) {
    const bool k_valid = k0 + k_local < k_end;
    const float* dy_pixel = dy + pos.n * image_stride_dy + pos.i * out_width + pos.j;
    const float* x_image = x + pos.n * image_stride_x;
    const int top = pos.i * stride_h - pad_h, left = pos.j * stride_w - pad_w;
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i) {
      const int m = col + i * (CONV_THREADS / CONV_TILE_K), o = m0 + m;
      As[k_local][m] = (k_valid && o < M) ? dy_pixel[(long long)o * out_pixels] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < CONV_LOADS; ++i) {
      const int p = col + i * (CONV_THREADS / CONV_TILE_K);
      const int h = top + tap[i].r, w = left + tap[i].s;
      float v = 0.0f;                         // the zero padding
      if (k_valid && tap_valid[i] && h >= 0 && h < height && w >= 0 && w < width)
        v = x_image[((long long)tap[i].c * height + h) * width + w];
      Bs[k_local][p] = v;
    }
    advance3(pos, pos_step, out_height, out_width);
    __syncthreads();
    accumulate_tile(As, Bs, acc, tx, ty);
    __syncthreads();
  }

  float* out = dw_partial + (long long)blockIdx.z * M * P;
#pragma unroll
  for (int i = 0; i < CONV_MICRO; ++i) {
    const int o = m0 + ty + i * (CONV_TILE_M / CONV_MICRO);
    if (o >= M) continue;
#pragma unroll
    for (int j = 0; j < CONV_MICRO; ++j) {
      const int p = p0 + tx + j * CONV_THREADS_X;
      if (p < P) out[(long long)o * P + p] = acc[i][j];
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

// ------------------------------------------------ the forward with the batchnorm statistics

// The forward with the statistics of the batchnorm that reads y in its epilogue (training, a
// Conv2D feeding a BatchNorm2D: cupycnn/ops/conv2d_stats.py; conv2d_tc.cu's
// conv2d_tc_forward_stats for the tensor cores): y as conv2d_forward has it (bias; no residual,
// no ReLU), and for each output channel o of its tile the block's (sum y, sum y^2) over its
// pixels, in double, at stats_partial[o, blockIdx.x]; batchnorm.cu's
// batchnorm_combine_partials adds the blocks up in a fixed order.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_FORWARD_MIN_BLOCKS)
conv2d_forward_stats(const float* __restrict__ x, const float* __restrict__ weight,
                     const float* __restrict__ bias, float* __restrict__ y,
                     double* __restrict__ stats_partial, int batch, int in_channels, int height,
                     int width, int out_channels, int kernel_h, int kernel_w, int stride_h,
                     int stride_w, int pad_h, int pad_w, int out_height, int out_width) {
  conv2d_forward_body<true>(x, weight, bias, nullptr, 0, y, batch, in_channels, height, width,
                            out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                            out_height, out_width, stats_partial);
}
