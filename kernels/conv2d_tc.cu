// conv2d_tc.cu -- the convolution's three products on tensor cores (precision tf32 or bf16):
// conv2d.cu's implicit GEMMs (same arguments, grids and stride-phase / split-K structure; its
// header has the formulas and the table of M, P, K per product), with tc_tile.cuh's block tile
// in place of the FP32 register tile. Both operands of every product are rounded to TF32 or BF16
// as they enter the mma (reference/conv2d.py with precision=...); accumulation is FP32.
//
// This file only says where each element of the two operand tiles is in memory: the loaders
// below are called once per reduction step, in order, so each keeps its coordinates (Tap,
// PhaseTap, Pixel) and advances them by TC_BK with carries instead of dividing every step.
// Elements outside the image (the zero padding) or past the matrix are zero-filled by cp.async.
// The weights of the forward product are read along k in 16-byte copies when K = C_in kh kw is a
// multiple of 4; the other operands one float per copy (gathered through taps, stride phases and
// padding; the weight gradient's dy is contiguous along k only within an image), each in
// tc_tile.cuh's bank-conflict-free thread pattern for the axis it is contiguous along
// (TcKMajor: k; TcRowMajor: the tile's rows, i.e. pixels).
//
//   conv2d_tc_forward          y  = w [C_out x C_in kh kw] @ im2col(x)   (+ bias, + residual,
//                              ReLU: common.cuh's conv_epilogue, each optional)
//   conv2d_tc_backward_input   dx = w^T @ im2col^T(dy), per stride phase (blockIdx.z)
//   conv2d_tc_backward_weight  dw_partial[split] = dy @ im2col(x)^T over one chunk of pixels;
//                              conv2d.cu's conv2d_backward_weight_reduce adds the chunks
//   conv2d_tc_forward_stats    the forward (bias only) that also writes each block's per-channel
//                              (sum y, sum y^2) for the batchnorm that reads y (at the end)
//
// Storage: each product is a template over the storage type T of the activations (x, y, the
// residual, dy, dx): float, or bf16 in the _bf16 entry points (precision bf16 keeps activations
// in BF16: cupycnn/ops/_storage.py). The weight, its gradient and the bias stay float32. A bf16
// operand reaches the stage through registers, one element per copy in the same thread pattern
// (tc_tile.cuh, TcCopies); the products, the FP32 accumulation and the epilogue are the float
// ones, and y / dx are rounded to BF16 once when stored: the result is the float32 kernel's on
// the decoded inputs, rounded.
#include "common.cuh"
#include "tc_tile.cuh"
#include "conv2d_coords.cuh"

// ------------------------------------------------------------------------------------ forward
// A[o][k] = w[o * K + k] (k-contiguous). B[k][p] = x at tap k = (c, r, s) of output pixel p
// (consecutive pixels are consecutive floats for stride 1): each thread keeps one pixel,
// PixelCopies::row(), and its PixelCopies::LOADS taps, advanced by TC_BK per step.
typedef TcRowMajor<TC_BN> PixelCopies;

template <class T>
struct ForwardLoader {
  const float* w;
  const T* x_image;       // this thread's image
  int M, K, m0, height, width, kernel_h, kernel_w, top, left;
  bool pixel_valid, vectors;
  Tap tap[PixelCopies::LOADS];
  Tap tap_step;
  TcCopies<T, PixelCopies::LOADS> b_copies;

  __device__ __forceinline__ void load(int step, TcStage& s) {
    const int k0 = step * TC_BK, p = PixelCopies::row();
    tc_load_k_major<TC_BM>(s.a, w, M, K, m0, k0, vectors);
#pragma unroll
    for (int i = 0; i < PixelCopies::LOADS; ++i) {
      const int k = PixelCopies::k(i);
      const int h = top + tap[i].r, v = left + tap[i].s;
      const bool ok = pixel_valid && k0 + k < K && h >= 0 && h < height && v >= 0 && v < width;
      b_copies.copy(i, s, s.b, p, k,
                    ok ? x_image + ((long long)tap[i].c * height + h) * width + v : x_image, ok);
      advance3(tap[i], tap_step, kernel_h, kernel_w);
    }
  }
  __device__ __forceinline__ void flush(TcStage& s) { b_copies.flush(s); }
};

// STATS: also the batchnorm's statistics of y (see the _stats entry points).
template <class T, bool STATS>
__device__ __forceinline__ void conv2d_tc_forward_body(
    TcStage* stages, const T* __restrict__ x, const float* __restrict__ weight,
    const float* __restrict__ bias, const T* __restrict__ residual, int relu, T* __restrict__ y,
    int batch, int in_channels, int height, int width, int out_channels, int kernel_h,
    int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int out_height,
    int out_width, double* __restrict__ stats_partial) {
  const int out_pixels = out_height * out_width;
  const int M = out_channels, P = batch * out_pixels, K = in_channels * kernel_h * kernel_w;
  const int m0 = blockIdx.y * TC_BM, p0 = blockIdx.x * TC_BN;
  ForwardLoader<T> ld;
  ld.w = weight; ld.M = M; ld.K = K; ld.m0 = m0; ld.height = height; ld.width = width;
  ld.kernel_h = kernel_h; ld.kernel_w = kernel_w;
  ld.vectors = K % 4 == 0 && ((size_t)weight & 15) == 0;
  const int pixel = p0 + PixelCopies::row();
  ld.pixel_valid = pixel < P;
  const Pixel q = split3<Pixel>(ld.pixel_valid ? pixel : 0, out_height, out_width);
  ld.top = q.i * stride_h - pad_h;
  ld.left = q.j * stride_w - pad_w;
  ld.x_image = x + (long long)q.n * in_channels * height * width;
#pragma unroll
  for (int i = 0; i < PixelCopies::LOADS; ++i)
    ld.tap[i] = split3<Tap>(PixelCopies::k(i), kernel_h, kernel_w);
  ld.tap_step = split3<Tap>(TC_BK, kernel_h, kernel_w);
  TcAcc acc;
  tc_mainloop(ld, stages, (K + TC_BK - 1) / TC_BK, acc);
  // Column p of the result is output pixel p: y[image, o, q].
  auto store = [&](int r, int c, float& v) {
    const int o = m0 + r, q = p0 + c;
    if (o >= M || q >= P) return false;
    const int image = q / out_pixels;
    const long long index = ((long long)image * M + o) * out_pixels + (q - image * out_pixels);
    const T stored = from_float<T>(conv_epilogue(v, bias, residual, relu, o, index));
    y[index] = stored;
    v = to_float(stored);
    return true;
  };
  if (STATS) {
    // This block's (sum y, sum y^2) per output channel o, its slice blockIdx.x of the
    // [C_out, gridDim.x, 2] workspace, which batchnorm_combine_partials adds in order.
    auto rows = [&](int r, double sum, double sum_sq) {
      const int o = m0 + r;
      if (o >= M) return;
      double* slot = stats_partial + ((long long)o * gridDim.x + blockIdx.x) * 2;
      slot[0] = sum;
      slot[1] = sum_sq;
    };
    tc_epilogue_row_sums(acc, store, rows, stages);
  } else {
    auto plain = [&](int r, int c, float v) { store(r, c, v); };
    tc_epilogue(acc, plain);
  }
}

// ----------------------------------------------------------------------------- input gradient
// Stride phase (phase_h, phase_w) = blockIdx.z, as in conv2d.cu: its input pixels meet the taps
// r = phase_h + stride_h rr, s = phase_w + stride_w ss, and the reduction runs over k = (o, rr, ss).
// A[c][k] = w[o, c, r, s]: threads along k (TcKMajor: one tap column each, advanced per step).
// B[k][p] = dy[image, o, base_i - rr, base_j - ss] for input pixel p of the phase: one pixel per
// thread (PixelCopies).
template <class T>
struct InputGradLoader {
  const float* w;
  const T* dy_image;
  int M, m0, in_channels, taps, kernel_w, phase_h, phase_w, stride_h, stride_w, taps_h,
      taps_w, out_height, out_width, base_i, base_j, out_channels;
  // A's rows c = m0 + TcKMajor::row(i) of this thread (tc_rows_k_major: c * taps of the first,
  // the step, how many are below M; 32-bit, the weight has under 2^31 elements). Each row's
  // 64-bit offset and its c < M, loop invariants, stayed in registers (the weight gradient's
  // SASS: 8 rows x 3) and held the small tile to 3 blocks per SM.
  unsigned a_row0, a_row_step;
  int a_rows;
  bool pixel_valid;
  PhaseTap a_tap, b_tap[PixelCopies::LOADS], tap_step;
  TcCopies<T, PixelCopies::LOADS> b_copies;

  __device__ __forceinline__ void load(int, TcStage& s) {
    const int a_k = TcKMajor<TC_BM>::k();
    // k < K exactly when the tap's output channel o < C_out (rr, ss are below their sizes).
    const bool a_valid = a_tap.o < out_channels;
    // (unsigned: past the last step's end o reaches C_out, and the offset is only used when
    // a_valid, where it is below 2^31)
    const float* a_src = w + ((unsigned)a_tap.o * in_channels * taps + (phase_h + a_tap.rr *
                              stride_h) * kernel_w + phase_w + a_tap.ss * stride_w + a_row0);
#pragma unroll
    for (int i = 0; i < TcKMajor<TC_BM>::LOADS; ++i) {
      const bool ok = a_valid && i < a_rows;
      tc_copy(s.a, TcKMajor<TC_BM>::row(i), a_k, ok ? a_src + i * a_row_step : w, ok);
    }
    advance3(a_tap, tap_step, taps_h, taps_w);
    const int p = PixelCopies::row();
#pragma unroll
    for (int i = 0; i < PixelCopies::LOADS; ++i) {
      const int k = PixelCopies::k(i);
      const int oi = base_i - b_tap[i].rr, oj = base_j - b_tap[i].ss;
      const bool ok = pixel_valid && b_tap[i].o < out_channels && oi >= 0 &&
                      oi < out_height && oj >= 0 && oj < out_width;
      b_copies.copy(i, s, s.b, p, k,
                    ok ? dy_image + ((long long)b_tap[i].o * out_height + oi) * out_width + oj
                       : dy_image,
                    ok);
      advance3(b_tap[i], tap_step, taps_h, taps_w);
    }
  }
  __device__ __forceinline__ void flush(TcStage& s) { b_copies.flush(s); }
};

template <class T>
__device__ __forceinline__ void conv2d_tc_backward_input_body(
    TcStage* stages, const T* __restrict__ dy, const float* __restrict__ weight,
    T* __restrict__ dx, int batch, int in_channels, int height, int width, int out_channels,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
    int out_height, int out_width) {
  const PhaseAxis rows = phase_axis(blockIdx.z / stride_w, height, kernel_h, stride_h, pad_h);
  const PhaseAxis cols = phase_axis(blockIdx.z % stride_w, width, kernel_w, stride_w, pad_w);
  const int phase_h = rows.phase, taps_h = rows.taps, first_h = rows.first, phase_rows = rows.count;
  const int phase_w = cols.phase, taps_w = cols.taps, first_w = cols.first, phase_cols = cols.count;
  const int M = in_channels, P = batch * phase_rows * phase_cols;
  const int K = out_channels * taps_h * taps_w;
  const int m0 = blockIdx.y * TC_BM, p0 = blockIdx.x * TC_BN;
  if (p0 >= P) return;                        // the grid is sized for the largest phase
  InputGradLoader<T> ld;
  ld.w = weight; ld.M = M; ld.m0 = m0; ld.in_channels = in_channels;
  ld.taps = kernel_h * kernel_w; ld.kernel_w = kernel_w; ld.phase_h = phase_h;
  ld.phase_w = phase_w; ld.stride_h = stride_h; ld.stride_w = stride_w; ld.taps_h = taps_h;
  ld.taps_w = taps_w; ld.out_height = out_height; ld.out_width = out_width;
  ld.out_channels = out_channels;
  tc_rows_k_major<TC_BM>(m0, M, ld.taps, ld.a_row0, ld.a_row_step, ld.a_rows);
  const int pixel = p0 + PixelCopies::row();
  ld.pixel_valid = pixel < P;
  ld.base_i = ld.base_j = 0;
  ld.dy_image = dy;
  if (ld.pixel_valid) {
    const Pixel q = split3<Pixel>(pixel, phase_rows, phase_cols);
    ld.base_i = (first_h + q.i * stride_h + pad_h - phase_h) / stride_h;   // exact
    ld.base_j = (first_w + q.j * stride_w + pad_w - phase_w) / stride_w;
    ld.dy_image = dy + (long long)q.n * out_channels * out_height * out_width;
  }
  TcAcc acc;
  if (K > 0) {
    ld.a_tap = split3<PhaseTap>(TcKMajor<TC_BM>::k(), taps_h, taps_w);
#pragma unroll
    for (int i = 0; i < PixelCopies::LOADS; ++i)
      ld.b_tap[i] = split3<PhaseTap>(PixelCopies::k(i), taps_h, taps_w);
    ld.tap_step = split3<PhaseTap>(TC_BK, taps_h, taps_w);
    tc_mainloop(ld, stages, (K + TC_BK - 1) / TC_BK, acc);
  } else {
    tc_zero(acc);                             // a phase no tap reaches: dx = 0
  }
  auto store = [&](int r, int c, float v) {
    const int ch = m0 + r, p = p0 + c;
    if (ch >= M || p >= P) return;
    const Pixel q = split3<Pixel>(p, phase_rows, phase_cols);
    const int h = first_h + q.i * stride_h, wc = first_w + q.j * stride_w;
    dx[(((long long)q.n * M + ch) * height + h) * width + wc] = from_float<T>(v);
  };
  tc_epilogue(acc, store);
}

// ---------------------------------------------------------------------------- weight gradient
// Over the output pixels k in [split * split_len, (split + 1) * split_len): A[o][k] =
// dy[n, o, i, j] and B[k][p] = x at tap p = (c, r, s) of output pixel k = (n, i, j). Both are
// read along k (TcKMajor: the pixel decoded once and advanced by TC_BK per step); each thread
// keeps TcKMajor<TC_BN>::LOADS taps for the whole loop.
template <class T>
struct WeightGradLoader {
  const T* dy;
  const T* x;
  int M, P, m0, p0, k_end, height, width, out_height, out_width, stride_h, stride_w, pad_h,
      pad_w, out_pixels;
  long long image_stride_x, image_stride_dy;
  Pixel pos, pos_step;                // the output pixel of this thread's row at this step
  // Tap i = (c, r, s) of this thread, fixed for the loop, in two registers (registers: the
  // small tile's 8 taps as Tap and bool took 32 and held the kernel to 3 blocks per SM):
  // c H W + r W + s, the tap's element relative to the window's corner, and r << 16 | s for
  // the padding test; bit i of tap_valid: tap i is a column of the matrix (p < P).
  int tap_offset[TcKMajor<TC_BN>::LOADS];
  int tap_rs[TcKMajor<TC_BN>::LOADS];
  unsigned tap_valid;
  // A's rows o = m0 + TcKMajor::row(i), as in InputGradLoader: o * out_pixels of the first,
  // the step, how many are below M (32-bit offsets within an image, as tap_offset's:
  // ops/_conv2d_checks.py checks that C_out H_out W_out and C_in H W fit).
  unsigned a_row0, a_row_step;
  int a_rows;
  TcCopies<T, TcKMajor<TC_BM>::LOADS> a_copies;
  TcCopies<T, TcKMajor<TC_BN>::LOADS> b_copies;

  __device__ __forceinline__ void load(int step, TcStage& s) {
    const int k_local = TcKMajor<TC_BM>::k();
    const bool k_valid = step * TC_BK + k_local < k_end;
    const T* dy_pixel = dy + pos.n * image_stride_dy + pos.i * out_width + pos.j;
    const T* x_image = x + pos.n * image_stride_x;
    const int top = pos.i * stride_h - pad_h, left = pos.j * stride_w - pad_w;
    const int corner = top * width + left;
#pragma unroll
    for (int i = 0; i < TcKMajor<TC_BM>::LOADS; ++i) {
      const bool ok = k_valid && i < a_rows;
      a_copies.copy(i, s, s.a, TcKMajor<TC_BM>::row(i), k_local,
                    ok ? dy_pixel + (a_row0 + i * a_row_step) : dy, ok);
    }
#pragma unroll
    for (int i = 0; i < TcKMajor<TC_BN>::LOADS; ++i) {
      const int p = TcKMajor<TC_BN>::row(i);
      const int h = top + (tap_rs[i] >> 16), v = left + (tap_rs[i] & 0xffff);
      const bool ok = k_valid && (tap_valid >> i & 1) && h >= 0 && h < height && v >= 0 &&
                      v < width;
      b_copies.copy(i, s, s.b, p, k_local, ok ? x_image + (corner + tap_offset[i]) : x, ok);
    }
    advance3(pos, pos_step, out_height, out_width);
  }
  __device__ __forceinline__ void flush(TcStage& s) {
    a_copies.flush(s);
    b_copies.flush(s);
  }
};

template <class T>
__device__ __forceinline__ void conv2d_tc_backward_weight_body(
    TcStage* stages, const T* __restrict__ dy, const T* __restrict__ x,
    float* __restrict__ dw_partial, int batch, int in_channels, int height, int width,
    int out_channels, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h,
    int pad_w, int out_height, int out_width, int split_len) {
  const int out_pixels = out_height * out_width;
  const int M = out_channels, P = in_channels * kernel_h * kernel_w, K = batch * out_pixels;
  const int k_begin = blockIdx.z * split_len;
  const int k_end = min(K, k_begin + split_len);
  const int m0 = blockIdx.y * TC_BM, p0 = blockIdx.x * TC_BN;
  WeightGradLoader<T> ld;
  ld.dy = dy; ld.x = x; ld.M = M; ld.P = P; ld.m0 = m0; ld.p0 = p0; ld.k_end = k_end - k_begin;
  ld.height = height; ld.width = width; ld.out_height = out_height; ld.out_width = out_width;
  ld.stride_h = stride_h; ld.stride_w = stride_w; ld.pad_h = pad_h; ld.pad_w = pad_w;
  ld.out_pixels = out_pixels;
  ld.image_stride_x = (long long)in_channels * height * width;
  ld.image_stride_dy = (long long)out_channels * out_pixels;
  tc_rows_k_major<TC_BM>(m0, M, out_pixels, ld.a_row0, ld.a_row_step, ld.a_rows);
  ld.tap_valid = 0;
#pragma unroll
  for (int i = 0; i < TcKMajor<TC_BN>::LOADS; ++i) {
    const int p = p0 + TcKMajor<TC_BN>::row(i);
    const Tap t = split3<Tap>(p < P ? p : 0, kernel_h, kernel_w);
    ld.tap_valid |= (unsigned)(p < P) << i;
    ld.tap_offset[i] = (t.c * height + t.r) * width + t.s;
    ld.tap_rs[i] = t.r << 16 | t.s;
  }
  ld.pos = split3<Pixel>(k_begin + TcKMajor<TC_BM>::k(), out_height, out_width);
  ld.pos_step = split3<Pixel>(TC_BK, out_height, out_width);
  TcAcc acc;
  tc_mainloop(ld, stages, (k_end - k_begin + TC_BK - 1) / TC_BK, acc);
  float* out = dw_partial + (long long)blockIdx.z * M * P;
  auto store = [&](int r, int c, float v) {
    const int o = m0 + r, p = p0 + c;
    if (o < M && p < P) out[(long long)o * P + p] = v;
  };
  tc_epilogue(acc, store);
}

// ------------------------------------------------------------- entry points: float, then bf16
// (written out: the emulator and the coverage table find kernels by their declarations)

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_tc_forward(const float* __restrict__ x, const float* __restrict__ weight,
    const float* __restrict__ bias, const float* __restrict__ residual, int relu,
    float* __restrict__ y, int batch, int in_channels, int height, int width, int out_channels,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
    int out_height, int out_width) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  conv2d_tc_forward_body<float, false>(stages, x, weight, bias, residual, relu, y, batch,
      in_channels, height, width, out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h,
      pad_w, out_height, out_width, nullptr);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_BACKWARD)
conv2d_tc_backward_input(const float* __restrict__ dy, const float* __restrict__ weight,
    float* __restrict__ dx, int batch, int in_channels, int height, int width, int out_channels,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
    int out_height, int out_width) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];
  conv2d_tc_backward_input_body(stages, dy, weight, dx, batch, in_channels, height, width,
      out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_height, out_width);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_BACKWARD)
conv2d_tc_backward_weight(const float* __restrict__ dy, const float* __restrict__ x,
    float* __restrict__ dw_partial, int batch, int in_channels, int height, int width,
    int out_channels, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h,
    int pad_w, int out_height, int out_width, int split_len) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];
  conv2d_tc_backward_weight_body(stages, dy, x, dw_partial, batch, in_channels, height, width,
      out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_height, out_width,
      split_len);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_tc_forward_bf16(const bf16* __restrict__ x, const float* __restrict__ weight,
    const float* __restrict__ bias, const bf16* __restrict__ residual, int relu,
    bf16* __restrict__ y, int batch, int in_channels, int height, int width, int out_channels,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
    int out_height, int out_width) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  conv2d_tc_forward_body<bf16, false>(stages, x, weight, bias, residual, relu, y, batch,
      in_channels, height, width, out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h,
      pad_w, out_height, out_width, nullptr);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_BACKWARD)
conv2d_tc_backward_input_bf16(const bf16* __restrict__ dy, const float* __restrict__ weight,
    bf16* __restrict__ dx, int batch, int in_channels, int height, int width, int out_channels,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
    int out_height, int out_width) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];
  conv2d_tc_backward_input_body(stages, dy, weight, dx, batch, in_channels, height, width,
      out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_height, out_width);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_BACKWARD)
conv2d_tc_backward_weight_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ x,
    float* __restrict__ dw_partial, int batch, int in_channels, int height, int width,
    int out_channels, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h,
    int pad_w, int out_height, int out_width, int split_len) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];
  conv2d_tc_backward_weight_body(stages, dy, x, dw_partial, batch, in_channels, height, width,
      out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_height, out_width,
      split_len);
}

// The forward with the statistics of the batchnorm that reads y folded into its epilogue
// (training, a Conv2D feeding a BatchNorm2D: cupycnn/ops/conv2d_stats.py): y as
// conv2d_tc_forward has it (bias; no residual, no ReLU: the batchnorm comes first), and block
// (bx, by) writes, for each of its output channels o, (sum y, sum y^2) over its pixels, in
// double, to stats_partial[o, bx] ([C_out, gridDim.x, 2]: tc_tile.cuh tc_epilogue_row_sums);
// batchnorm.cu's batchnorm_combine_partials adds the slices in order. The sums are of y as
// stored (rounded to BF16 in the _bf16 one), as the batchnorm would read it.
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_tc_forward_stats(const float* __restrict__ x, const float* __restrict__ weight,
    const float* __restrict__ bias, float* __restrict__ y, double* __restrict__ stats_partial,
    int batch, int in_channels, int height, int width, int out_channels, int kernel_h,
    int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int out_height,
    int out_width) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  conv2d_tc_forward_body<float, true>(stages, x, weight, bias, (const float*)nullptr, 0, y,
      batch, in_channels, height, width, out_channels, kernel_h, kernel_w, stride_h, stride_w,
      pad_h, pad_w, out_height, out_width, stats_partial);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_tc_forward_stats_bf16(const bf16* __restrict__ x, const float* __restrict__ weight,
    const float* __restrict__ bias, bf16* __restrict__ y, double* __restrict__ stats_partial,
    int batch, int in_channels, int height, int width, int out_channels, int kernel_h,
    int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int out_height,
    int out_width) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  conv2d_tc_forward_body<bf16, true>(stages, x, weight, bias, (const bf16*)nullptr, 0, y,
      batch, in_channels, height, width, out_channels, kernel_h, kernel_w, stride_h, stride_w,
      pad_h, pad_w, out_height, out_width, stats_partial);
}
