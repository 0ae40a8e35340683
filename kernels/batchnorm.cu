// batchnorm.cu -- batch normalisation (PyTorch's BatchNorm1d / BatchNorm2d), forward and backward,
// in four stages so that synchronised batchnorm can all-reduce the small per-channel sums between
// them without touching a kernel.
//
// x is viewed as [outer, channels, inner]: [N, C, H*W] for BatchNorm2D, [N, C, L] or [N, C, 1]
// for BatchNorm1D. Channel c holds count = outer * inner elements; n below is the element count
// over every rank (the local count unless an all-reduce changed it).
//
//   (1) batchnorm_stats            sums[c] = (sum x, sum x^2)                            float64
//   (2) batchnorm_normalize        mean = sum x / n,  var = sum x^2 / n - mean^2  (biased)
//                                  invstd = 1 / sqrt(var + eps)
//                                  y = (x - mean) * invstd * weight[c] + bias[c]
//                                  also writes mean[c] and invstd[c] for the backward
//       batchnorm_update_running_stats
//                                  running_mean = (1 - f) running_mean + f mean
//                                  running_var  = (1 - f) running_var  + f var * n / (n - 1)
//                                  num_batches_tracked += 1;  f = momentum, or 1 / num_batches_
//                                  tracked when momentum is None (a cumulative average)
//       batchnorm_normalize_running  evaluation: the same y from running_mean and running_var
//   (3) batchnorm_backward_reduce  sums[c] = (sum dy, sum dy * xhat),  xhat = (x - mean) * invstd
//   (4) batchnorm_backward_apply   batch statistics (after a training forward):
//                                    dx = weight * invstd
//                                         * (dy - sum dy / n - xhat * sum(dy xhat) / n)
//                                  frozen statistics (after an evaluation forward):
//                                    dx = weight * invstd * dy
//                                  dweight = sum dy * xhat, dbias = sum dy (of this rank's batch)
//       batchnorm_combine_partials the reductions (1) and (3) split over several blocks per
//                                  channel (or a convolution's epilogue's per-block sums):
//                                  adds the blocks' partial sums in a fixed order.
//
// Fused epilogue: ResNet's bn -> relu and bn -> (+ shortcut) -> relu in one pass over memory
// instead of two or three, in training and evaluation.
// - Forward, (2): y = max((x - mean) * invstd * weight + bias + residual, 0), with the residual
//   when given one (residual != NULL) and the ReLU when asked (relu != 0).
// - Backward: g = y > 0 ? dy : 0 is the gradient at the normalised value (and at the residual),
//   so (3) and (4) take y (NULL: no ReLU, g = dy) and (4) also writes dresidual = g (NULL: no
//   residual).
// - No memory is kept for the ReLU: y is the next layer's input, which that layer keeps anyway
//   (unfused, the ReLU would keep its own input).
//
// Parallelisation:
// - Reductions, (1) and (3): grid (channels, splits). Block (c, s) reduces the s-th of `splits`
//   equal ranges of channel c's elements in their flat order e = o * inner + i: consecutive
//   threads read consecutive addresses along H*W (coalesced; strided by C*inner only when inner
//   is small, as for BatchNorm1D on [N, C]).
// - Each thread accumulates in double, block_sum_pair_double adds the threads up in a fixed
//   order, and thread 0 writes the block's pair: with one split, the channel's sums. The wrapper
//   splits a channel when the channels alone would not fill the GPU; batchnorm_combine_partials
//   then adds the splits in order. No atomics: the same bits on every run.
// - Elementwise stages, (2) and (4): grid (channels, chunks). Block (c, k) handles the k-th range
//   of BN_ELEMENTS_PER_BLOCK elements of channel c; every thread derives the channel's mean and
//   invstd (or coefficients) once from the per-channel arrays, then streams its elements; block
//   (c, 0) thread 0 writes the per-channel outputs.
// - batchnorm_update_running_stats: one block looping over the channels (a few hundred values;
//   one block also makes the counter increment race-free).
#include "common.cuh"

#define BN_THREADS 256                  // reductions and elementwise stages
#define BN_ELEMENTS_PER_BLOCK 4096      // elementwise stages: 16 elements per thread
#define BN_RUNNING_THREADS 256          // batchnorm_update_running_stats: one block

// Offset of element (o, c, i) of x viewed as [outer, channels, inner].
__device__ __forceinline__ long long bn_offset(int o, int c, int i, int channels, int inner) {
  return ((long long)o * channels + c) * inner + i;
}

// Range [begin, end) of channel elements handled by block blockIdx.y of gridDim.y, when the count
// elements are cut into pieces of `piece` elements (the last may be shorter or empty).
__device__ __forceinline__ void block_range(int count, int piece, int* begin, int* end) {
  *begin = min(count, (int)blockIdx.y * piece);
  *end = min(count, *begin + piece);
}

// Where a reduction block leaves its pair: partial[(c * splits + s) * 2 + {0, 1}].
__device__ __forceinline__ void write_partial(double* partial, double a, double b) {
  if (threadIdx.x == 0) {
    const long long slot = ((long long)blockIdx.x * gridDim.y + blockIdx.y) * 2;
    partial[slot] = a;
    partial[slot + 1] = b;
  }
}

// (1) Grid: (channels, splits); block: BN_THREADS. partial: [channels, splits, 2] float64 (with
// one split, the [channels, 2] sums themselves).
template <class T>
__device__ __forceinline__ void stats_body(const T* __restrict__ x, double* __restrict__ partial,
                                           int outer, int channels, int inner) {
  __shared__ double scratch[2 * WARP_SIZE];
  const int c = blockIdx.x, count = outer * inner;
  int begin, end;
  block_range(count, ceil_div(count, gridDim.y), &begin, &end);
  double sum = 0.0, sum_sq = 0.0;
  RowColCursor at(begin + threadIdx.x, blockDim.x, inner);
  for (int e = begin + threadIdx.x; e < end; e += blockDim.x, at.advance()) {
    const double v = to_float(x[bn_offset(at.row, c, at.col, channels, inner)]);
    sum += v;
    sum_sq += v * v;
  }
  block_sum_pair_double(sum, sum_sq, scratch);
  write_partial(partial, sum, sum_sq);
}

// Grid: (channels); block: BN_THREADS. Block c adds channel c's splits: thread t the splits
// t, t + BN_THREADS, ... in order (consecutive threads read consecutive pairs: coalesced), then
// block_sum_pair_double in its fixed order. Splits may be many (a convolution's epilogue leaves
// one pair per block of pixels: cupycnn/ops/conv2d_stats.py), so they are not left to one thread.
extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_combine_partials(const double* __restrict__ partial, double* __restrict__ sums,
                           int channels, int splits) {
  __shared__ double scratch[2 * WARP_SIZE];
  const int c = blockIdx.x;
  double a = 0.0, b = 0.0;
  for (int s = threadIdx.x; s < splits; s += blockDim.x) {
    const long long slot = ((long long)c * splits + s) * 2;
    a += partial[slot];
    b += partial[slot + 1];
  }
  block_sum_pair_double(a, b, scratch);
  if (threadIdx.x == 0) {
    sums[2 * c] = a;
    sums[2 * c + 1] = b;
  }
}

// y = (x - mean) * (invstd * weight) + bias [+ residual] [then max(., 0)] over this block's
// range of channel c; block (c, 0) also records mean and invstd for the backward.
template <class T>
__device__ __forceinline__ void normalize_channel_range(
    const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
    const T* __restrict__ residual, int relu, T* __restrict__ y, float* __restrict__ mean_out,
    float* __restrict__ invstd_out, float mean, float invstd, int outer, int channels,
    int inner) {
  const int c = blockIdx.x, count = outer * inner;
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    mean_out[c] = mean;
    invstd_out[c] = invstd;
  }
  const float scale = invstd * weight[c], shift = bias[c];
  int begin, end;
  block_range(count, BN_ELEMENTS_PER_BLOCK, &begin, &end);
  RowColCursor at(begin + threadIdx.x, blockDim.x, inner);
  for (int e = begin + threadIdx.x; e < end; e += blockDim.x, at.advance()) {
    const long long k = bn_offset(at.row, c, at.col, channels, inner);
    // x - mean first: no cancellation of large terms
    float v = (to_float(x[k]) - mean) * scale + shift;
    if (residual) v += to_float(residual[k]);
    y[k] = from_float<T>(relu ? fmaxf(v, 0.0f) : v);
  }
}

// (2) Grid: (channels, ceil(outer * inner / BN_ELEMENTS_PER_BLOCK)); block: BN_THREADS.
// sums: [channels, 2] (sum x, sum x^2) over `count` elements per channel (all ranks).
template <class T>
__device__ __forceinline__ void normalize_body(
    const T* __restrict__ x, const double* __restrict__ sums, long long count,
    const float* __restrict__ weight, const float* __restrict__ bias,
    const T* __restrict__ residual, int relu, T* __restrict__ y, float* __restrict__ mean_out,
    float* __restrict__ invstd_out, int outer, int channels, int inner, float eps) {
  const int c = blockIdx.x;
  const double mean = sums[2 * c] / (double)count;
  const double var = fmax(sums[2 * c + 1] / (double)count - mean * mean, 0.0);   // biased
  normalize_channel_range(x, weight, bias, residual, relu, y, mean_out, invstd_out, (float)mean,
                          (float)rsqrt(var + (double)eps), outer, channels, inner);
}

// (2, evaluation) Same grid; the statistics are the running ones.
template <class T>
__device__ __forceinline__ void normalize_running_body(
    const T* __restrict__ x, const float* __restrict__ running_mean,
    const float* __restrict__ running_var, const float* __restrict__ weight,
    const float* __restrict__ bias, const T* __restrict__ residual, int relu,
    T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ invstd_out, int outer,
    int channels, int inner, float eps) {
  const int c = blockIdx.x;
  normalize_channel_range(x, weight, bias, residual, relu, y, mean_out, invstd_out,
                          running_mean[c], (float)rsqrt((double)running_var[c] + (double)eps),
                          outer, channels, inner);
}

// Grid: 1 block of BN_RUNNING_THREADS. count > 1 (the wrapper checks). cumulative != 0: momentum
// None, the factor is 1 / num_batches_tracked after the increment.
extern "C" __global__ void __launch_bounds__(BN_RUNNING_THREADS)
batchnorm_update_running_stats(const double* __restrict__ sums, long long count, float momentum,
                               int cumulative, float* __restrict__ running_mean,
                               float* __restrict__ running_var,
                               long long* __restrict__ num_batches_tracked, int channels) {
  const long long batches = *num_batches_tracked + 1;
  __syncthreads();                       // every thread has read the counter before it changes
  if (threadIdx.x == 0) *num_batches_tracked = batches;
  const double factor = cumulative ? 1.0 / (double)batches : (double)momentum;
  const double n = (double)count;
  for (int c = threadIdx.x; c < channels; c += blockDim.x) {
    const double mean = sums[2 * c] / n;
    // Unbiased: sum (x - mean)^2 / (n - 1), with sum (x - mean)^2 = sum x^2 - mean * sum x.
    const double var = fmax(sums[2 * c + 1] - mean * sums[2 * c], 0.0) / (n - 1.0);
    running_mean[c] = (float)((1.0 - factor) * running_mean[c] + factor * mean);
    running_var[c] = (float)((1.0 - factor) * running_var[c] + factor * var);
  }
}

// The gradient at the normalised value: dy, or (fused ReLU) dy where the output y is positive.
template <class T>
__device__ __forceinline__ float masked_grad(const T* __restrict__ dy, const T* __restrict__ y,
                                             long long k) {
  return y == nullptr || to_float(y[k]) > 0.0f ? to_float(dy[k]) : 0.0f;
}

// (3) Grid: (channels, splits); block: BN_THREADS. partial as in batchnorm_stats. mean, invstd:
// what the forward recorded; y: the fused forward's output (NULL: no ReLU). sum g * (x - mean)
// is accumulated, then scaled by invstd once.
template <class T>
__device__ __forceinline__ void backward_reduce_body(
    const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ y,
    const float* __restrict__ mean, const float* __restrict__ invstd,
    double* __restrict__ partial, int outer, int channels, int inner) {
  __shared__ double scratch[2 * WARP_SIZE];
  const int c = blockIdx.x, count = outer * inner;
  const double channel_mean = mean[c];
  int begin, end;
  block_range(count, ceil_div(count, gridDim.y), &begin, &end);
  double sum_dy = 0.0, sum_dy_xmu = 0.0;
  RowColCursor at(begin + threadIdx.x, blockDim.x, inner);
  for (int e = begin + threadIdx.x; e < end; e += blockDim.x, at.advance()) {
    const long long k = bn_offset(at.row, c, at.col, channels, inner);
    const double g = masked_grad(dy, y, k);
    sum_dy += g;
    // exact difference: the sum may cancel
    sum_dy_xmu += g * ((double)to_float(x[k]) - channel_mean);
  }
  block_sum_pair_double(sum_dy, sum_dy_xmu, scratch);
  write_partial(partial, sum_dy, sum_dy_xmu * (double)invstd[c]);
}

// (4) Grid: (channels, ceil(outer * inner / BN_ELEMENTS_PER_BLOCK)); block: BN_THREADS.
// sums: [channels, 2] (sum dy, sum dy xhat) over `count` elements (all ranks; used for dx with
// batch statistics). param_sums: this rank's sums, which become dweight and dbias (the
// data-parallel gradient all-reduce adds those up later; adding the global sums would count
// them once per rank). batch_statistics = 0: frozen statistics, sums and count are not read.
// y: the fused forward's output (NULL: no ReLU); dresidual (NULL: none) receives the gradient
// of the fused residual, g itself.
template <class T>
__device__ __forceinline__ void backward_apply_body(
    const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ y,
    const float* __restrict__ weight, const float* __restrict__ mean,
    const float* __restrict__ invstd, const double* __restrict__ sums, long long count,
    const double* __restrict__ param_sums, T* __restrict__ dx, T* __restrict__ dresidual,
    float* __restrict__ dweight, float* __restrict__ dbias, int outer, int channels, int inner,
    int batch_statistics) {
  const int c = blockIdx.x, elements = outer * inner;
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    dweight[c] = (float)param_sums[2 * c + 1];
    dbias[c] = (float)param_sums[2 * c];
  }
  const float channel_mean = mean[c], channel_invstd = invstd[c];
  const float scale = weight[c] * channel_invstd;
  int begin, end;
  block_range(elements, BN_ELEMENTS_PER_BLOCK, &begin, &end);
  RowColCursor at(begin + threadIdx.x, blockDim.x, inner);
  if (batch_statistics) {
    // The mean and var depend on every x of the channel: two correction terms, shared by all.
    const float mean_dy = (float)(sums[2 * c] / (double)count);
    const float mean_dy_xhat = (float)(sums[2 * c + 1] / (double)count);
    for (int e = begin + threadIdx.x; e < end; e += blockDim.x, at.advance()) {
      const long long k = bn_offset(at.row, c, at.col, channels, inner);
      const float g = masked_grad(dy, y, k);
      const float xhat = (to_float(x[k]) - channel_mean) * channel_invstd;
      dx[k] = from_float<T>(scale * (g - mean_dy - xhat * mean_dy_xhat));
      if (dresidual) dresidual[k] = from_float<T>(g);
    }
  } else {
    for (int e = begin + threadIdx.x; e < end; e += blockDim.x, at.advance()) {
      const long long k = bn_offset(at.row, c, at.col, channels, inner);
      const float g = masked_grad(dy, y, k);
      dx[k] = from_float<T>(scale * g);    // frozen statistics: an affine map per channel
      if (dresidual) dresidual[k] = from_float<T>(g);
    }
  }
}

// ------------------------------------------------------------- entry points: float, then bf16
// (written out: the emulator and the coverage table find kernels by their declarations)
extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_stats(const float* __restrict__ x, double* __restrict__ partial, int outer,
                int channels, int inner) {
  stats_body(x, partial, outer, channels, inner);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_normalize(const float* __restrict__ x, const double* __restrict__ sums,
                    long long count, const float* __restrict__ weight,
                    const float* __restrict__ bias, const float* __restrict__ residual, int relu,
                    float* __restrict__ y, float* __restrict__ mean_out,
                    float* __restrict__ invstd_out, int outer, int channels, int inner,
                    float eps) {
  normalize_body(x, sums, count, weight, bias, residual, relu, y, mean_out, invstd_out, outer,
                 channels, inner, eps);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_normalize_running(const float* __restrict__ x,
                            const float* __restrict__ running_mean,
                            const float* __restrict__ running_var,
                            const float* __restrict__ weight, const float* __restrict__ bias,
                            const float* __restrict__ residual, int relu, float* __restrict__ y,
                            float* __restrict__ mean_out, float* __restrict__ invstd_out,
                            int outer, int channels, int inner, float eps) {
  normalize_running_body(x, running_mean, running_var, weight, bias, residual, relu, y,
                         mean_out, invstd_out, outer, channels, inner, eps);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_backward_reduce(const float* __restrict__ x, const float* __restrict__ dy,
                          const float* __restrict__ y, const float* __restrict__ mean,
                          const float* __restrict__ invstd, double* __restrict__ partial,
                          int outer, int channels, int inner) {
  backward_reduce_body(x, dy, y, mean, invstd, partial, outer, channels, inner);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_backward_apply(const float* __restrict__ x, const float* __restrict__ dy,
                         const float* __restrict__ y, const float* __restrict__ weight,
                         const float* __restrict__ mean, const float* __restrict__ invstd,
                         const double* __restrict__ sums, long long count,
                         const double* __restrict__ param_sums, float* __restrict__ dx,
                         float* __restrict__ dresidual, float* __restrict__ dweight,
                         float* __restrict__ dbias, int outer, int channels, int inner,
                         int batch_statistics) {
  backward_apply_body(x, dy, y, weight, mean, invstd, sums, count, param_sums, dx, dresidual,
                      dweight, dbias, outer, channels, inner, batch_statistics);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_stats_bf16(const bf16* __restrict__ x, double* __restrict__ partial, int outer,
                int channels, int inner) {
  stats_body(x, partial, outer, channels, inner);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_normalize_bf16(const bf16* __restrict__ x, const double* __restrict__ sums,
                    long long count, const float* __restrict__ weight,
                    const float* __restrict__ bias, const bf16* __restrict__ residual, int relu,
                    bf16* __restrict__ y, float* __restrict__ mean_out,
                    float* __restrict__ invstd_out, int outer, int channels, int inner,
                    float eps) {
  normalize_body(x, sums, count, weight, bias, residual, relu, y, mean_out, invstd_out, outer,
                 channels, inner, eps);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_normalize_running_bf16(const bf16* __restrict__ x,
                            const float* __restrict__ running_mean,
                            const float* __restrict__ running_var,
                            const float* __restrict__ weight, const float* __restrict__ bias,
                            const bf16* __restrict__ residual, int relu, bf16* __restrict__ y,
                            float* __restrict__ mean_out, float* __restrict__ invstd_out,
                            int outer, int channels, int inner, float eps) {
  normalize_running_body(x, running_mean, running_var, weight, bias, residual, relu, y,
                         mean_out, invstd_out, outer, channels, inner, eps);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_backward_reduce_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dy,
                          const bf16* __restrict__ y, const float* __restrict__ mean,
                          const float* __restrict__ invstd, double* __restrict__ partial,
                          int outer, int channels, int inner) {
  backward_reduce_body(x, dy, y, mean, invstd, partial, outer, channels, inner);
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
batchnorm_backward_apply_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dy,
                         const bf16* __restrict__ y, const float* __restrict__ weight,
                         const float* __restrict__ mean, const float* __restrict__ invstd,
                         const double* __restrict__ sums, long long count,
                         const double* __restrict__ param_sums, bf16* __restrict__ dx,
                         bf16* __restrict__ dresidual, float* __restrict__ dweight,
                         float* __restrict__ dbias, int outer, int channels, int inner,
                         int batch_statistics) {
  backward_apply_body(x, dy, y, weight, mean, invstd, sums, count, param_sums, dx, dresidual,
                      dweight, dbias, outer, channels, inner, batch_statistics);
}
